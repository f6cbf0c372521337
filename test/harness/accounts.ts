/**
 * Users and groups for tests that need real accounts (the bus policy names
 * users and groups). Accounts that exist are used as they are; accounts
 * this creates are removed by `cleanup()`, and when the test process exits
 * whatever happened. Users it creates carry the comment TEST_MARK, so a
 * run that was killed leaves accounts the next run recognises and removes.
 */
import { spawnSync } from 'node:child_process';

export const TEST_MARK = 'vmdevd test account';

export interface Account {
  readonly name: string;
  readonly id: number;
  /** A user's primary group (a group's own id for a group). */
  readonly gid: number;
}

function getent(db: 'passwd' | 'group', name: string): string[] | undefined {
  const r = spawnSync('getent', [db, name], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split(':') : undefined;
}

function must(command: string, args: string[]): void {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  if (r.status !== 0)
    throw new Error(`${command} ${args.join(' ')} failed: ${r.stderr || r.stdout || r.error?.message}`);
}

export class Accounts {
  private readonly users: string[] = [];
  private readonly groups: string[] = [];
  private readonly onExit = () => {
    try {
      this.cleanup();
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n`);
    }
  };

  constructor() {
    process.on('exit', this.onExit);
  }

  /** The group, created (as a system group) if it does not exist. */
  group(name: string): Account {
    let entry = getent('group', name);
    if (entry === undefined) {
      must('groupadd', ['--system', name]);
      this.groups.push(name);
      entry = getent('group', name)!;
    }
    return { name, id: Number(entry[2]), gid: Number(entry[2]) };
  }

  /**
   * The user, created without a home or login if it does not exist (or was
   * left by an earlier run), and then made a member of `groups`.
   */
  user(name: string, options: { system?: boolean; groups?: readonly string[] } = {}): Account {
    let entry = getent('passwd', name);
    if (entry !== undefined && entry[4] === TEST_MARK && !this.users.includes(name)) {
      // Left by a run that was killed: ours to take over and remove.
      this.users.push(name);
    }
    if (entry === undefined) {
      const args = [
        '--no-create-home',
        '--home-dir',
        '/nonexistent',
        '--shell',
        '/usr/sbin/nologin',
        '--comment',
        TEST_MARK,
        '--user-group',
      ];
      if (options.system) args.push('--system');
      must('useradd', [...args, name]);
      this.users.push(name);
      entry = getent('passwd', name)!;
    }
    for (const group of options.groups ?? []) {
      if (!this.users.includes(name)) throw new Error(`will not add the existing user ${name} to ${group}`);
      must('usermod', ['--append', '--groups', group, name]);
    }
    return { name, id: Number(entry[2]), gid: Number(entry[3]) };
  }

  /** Removes every account this created: users first, then groups. Safe to call twice. */
  cleanup(): void {
    const errors: string[] = [];
    for (const name of this.users.splice(0).reverse()) {
      const r = spawnSync('userdel', [name], { encoding: 'utf8' });
      if (r.status !== 0 && getent('passwd', name) !== undefined) errors.push(`userdel ${name}: ${r.stderr}`);
    }
    for (const name of this.groups.splice(0).reverse()) {
      const r = spawnSync('groupdel', [name], { encoding: 'utf8' });
      if (r.status !== 0 && getent('group', name) !== undefined) errors.push(`groupdel ${name}: ${r.stderr}`);
    }
    process.removeListener('exit', this.onExit);
    if (errors.length > 0) throw new Error(errors.join('\n'));
  }
}
