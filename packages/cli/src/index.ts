/** @ferry/cli — the `ferry` command (bin/ferry.js runs main()). */
export { main, buildProgram, type CliIo } from './main';
export { FerryClient, CliError, type ClientOptions } from './client';
export {
  PlainRenderer,
  TtyRenderer,
  JsonRenderer,
  formatBytes,
  formatSeconds,
  layerText,
  waitingText,
  type Renderer,
} from './render';
// serve.ts (the roles: bullmq, fastify, …) is loaded only by `ferry serve`, never by a
// client command (the repository's tests import it from src/serve directly).
export { ROLES, type Role } from './roles';
export type { RunningRole } from './serve';
export { absolutizeSource } from './source-arg';
