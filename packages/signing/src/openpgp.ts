/**
 * OpenPGP.js, loaded through its CommonJS build. Its type declarations sit in
 * an ES module package, which a CommonJS TypeScript file may only import as
 * types; the runtime value comes from require(), which the package exports.
 */
import type * as OpenPGP from 'openpgp' with { 'resolution-mode': 'import' };

export type { OpenPGP };
export const openpgp: typeof OpenPGP = require('openpgp');
