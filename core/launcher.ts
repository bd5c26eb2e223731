/** How a component process is to be started. */
export interface LaunchSpec {
  /** Component name, used in logs (`compute main`). */
  name: string;
  /** Absolute path of the executable. */
  command: string;
  args: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Run as this user and group (set when neon runs as root: Postgres refuses root). */
  uid?: number;
  gid?: number;
  /** The process's stdout and stderr are appended here. */
  logFile: string;
  /** Open a Node IPC channel to the process (for node processes: safekeepers). */
  ipc?: boolean;
}

/** How a process ended. */
export interface ProcessExit {
  code: number | null;
  signal: string | null;
}

/** A running component process. */
export interface LaunchedProcess {
  pid: number;
  /** Settles when the process has exited, whatever the reason; never rejects. */
  exited: Promise<ProcessExit>;
  /** Send a signal; false when the process is already gone. */
  kill(signal: NodeJS.Signals): boolean;
  /** With `ipc`: send a message to the process. */
  send?(message: unknown): void;
  /** With `ipc`: receive the process's messages. */
  onMessage?(listener: (message: unknown) => void): void;
}

/** Starts processes of one component kind (`compute`, later `safekeeper`, `pageserver`). */
export interface Launcher {
  launch(spec: LaunchSpec): Promise<LaunchedProcess>;
}

/** What the launcher bail hook is asked for. */
export interface LauncherRequest {
  kind: string;
}
