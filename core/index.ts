// The public API of neon for config files and third-party plugins: `import { defineConfig } from 'neon-local'`.
export { defineConfig, type NeonConfig, type PostgresConfig, type DaemonConfig, type UserConfigExport } from './config.js';
export { checkPluginOptions, type NeonPlugin, type PluginOption, type ConfigEnv, type ObjectHook } from './plugin.js';
export type * from './hooks.js';
export type { Storage, StorageObject, StorageRequest, PutOptions } from './storage.js';
export { checkKey, readObject } from './storage.js';
export type { BackupFormat, FormatRequest } from './format.js';
export type { Launcher, LaunchSpec, LaunchedProcess, LauncherRequest, ProcessExit } from './launcher.js';
export type { Logger } from './log.js';
export { NeonError, PluginError, UnhandledSchemeError } from './errors.js';
