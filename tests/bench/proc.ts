import fs from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times; 100 on every Linux we run on (getconf CLK_TCK). */
const CLOCK_TICKS_PER_S = 100;

export interface ProcSample {
  /** utime + stime of the process, in microseconds. */
  cpuUs: number;
  /** Resident set size now (VmRSS), bytes. */
  rssBytes: number;
  /** Peak resident set size since start or the last resetPeak (VmHWM), bytes. */
  peakRssBytes: number;
}

export function sample(pid: number): ProcSample {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    cpuUs: ((utime + stime) * 1_000_000) / CLOCK_TICKS_PER_S,
    rssBytes: statusKb(status, 'VmRSS') * 1024,
    peakRssBytes: statusKb(status, 'VmHWM') * 1024,
  };
}

function statusKb(status: string, key: string): number {
  const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status);
  return match?.[1] === undefined ? 0 : Number(match[1]);
}

/**
 * Resets VmHWM to the current RSS, so a scenario's peak excludes its setup (registrations hash
 * passwords with Argon2, which would otherwise dominate our peak). Returns false where the kernel
 * refuses, in which case the peak is the process lifetime's.
 */
export function resetPeak(pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}
