/** The roles `ferry serve --role` starts (kept apart from serve.ts so the CLI loads no role code). */
export const ROLES = ['api', 'lookup', 'upload', 'coordinator'] as const;
export type Role = (typeof ROLES)[number];
