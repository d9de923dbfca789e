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
export {
  serve,
  loadRole,
  closeAll,
  ROLES,
  ROLE_PACKAGES,
  type Role,
  type RunningRole,
} from './serve';
export { absolutizeSource } from './source-arg';
