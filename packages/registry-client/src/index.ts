export * from './errors';
export * from './reference';
export * from './allow';
export * from './digest';
export {
  parseChallenges,
  CredentialStore,
  runCredentialHelper,
  defaultDockerConfigPath,
  type Challenge,
  type Credentials,
} from './auth';
export * from './client';
