/**
 * Who may change things (call TestMethod or AttachDevices, write properties): the users and
 * groups of the config's `access`, plus the user the daemon runs as. The
 * bus policy should already keep everyone else out; this check holds even
 * when the policy file is missing or too permissive.
 *
 * Names are looked up in /etc/passwd and /etc/group when the daemon starts;
 * numeric ids work for accounts that exist only in a name service.
 */
import { readFileSync } from 'node:fs';
import { inject, injectable } from 'inversify';
import type { Logger } from '../plugin-api.js';
import { Config, type AccessConfig } from './config.js';
import { RootLogger } from './logger.js';

export const AccountFiles = Symbol('AccountFiles');

export interface AccountFiles {
  readonly passwd: string;
  readonly group: string;
}

/** What the bus says about a caller. */
export interface Credentials {
  readonly uid: number;
  /** The caller's groups as the kernel knows them, when the bus reports them. */
  readonly gids?: readonly number[] | undefined;
}

function readTable(path: string, log: Logger): string[][] {
  try {
    return readFileSync(path, 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(':'));
  } catch (err) {
    log.warn('cannot read account file', { path, error: (err as Error).message });
    return [];
  }
}

@injectable()
export class AccessPolicy {
  private readonly uids = new Set<number>();
  private readonly gids = new Set<number>();
  /** gid → member user names, and uid → primary gid, for callers whose groups the bus does not report. */
  private readonly members = new Map<number, Set<string>>();
  private readonly users = new Map<number, { name: string; gid: number }>();
  private readonly log: Logger;

  constructor(
    @inject(Config) config: Config,
    @inject(RootLogger) logger: RootLogger,
    @inject(AccountFiles) private readonly files: AccountFiles,
  ) {
    this.log = logger.child('access');
    this.configure(config.access);
  }

  /**
   * Reads the account files and resolves the allowed users and groups: at
   * start, and again on a config reload (which also picks up a user added
   * to an allowed group since).
   */
  configure(access: AccessConfig): void {
    this.uids.clear();
    this.gids.clear();
    this.members.clear();
    this.users.clear();
    const passwd = readTable(this.files.passwd, this.log);
    const group = readTable(this.files.group, this.log);
    for (const [name, , uid, gid] of passwd) this.users.set(Number(uid), { name: name!, gid: Number(gid) });
    for (const [, , gid, list] of group)
      this.members.set(Number(gid), new Set((list ?? '').split(',').filter(Boolean)));

    this.uids.add(process.getuid?.() ?? 0);
    for (const user of access.users) {
      const uid = /^[0-9]+$/.test(user) ? Number(user) : passwd.find((p) => p[0] === user)?.[2];
      if (uid === undefined) this.log.warn('allowed user does not exist; ignoring it', { user });
      else this.uids.add(Number(uid));
    }
    for (const name of access.groups) {
      const gid = /^[0-9]+$/.test(name) ? Number(name) : group.find((g) => g[0] === name)?.[2];
      if (gid === undefined)
        this.log.warn('allowed group does not exist; nobody gets access through it', { group: name });
      else this.gids.add(Number(gid));
    }
  }

  /** A description of who is allowed, for error messages. */
  allowedText(): string {
    const groups = [...this.gids].map((g) => `gid ${g}`);
    return [...[...this.uids].map((u) => `uid ${u}`), ...groups].join(', ');
  }

  isAllowed(caller: Credentials): boolean {
    if (this.uids.has(caller.uid)) return true;
    if (this.gids.size === 0) return false;
    if (caller.gids !== undefined) return caller.gids.some((g) => this.gids.has(g));
    const user = this.users.get(caller.uid);
    if (user === undefined) return false;
    if (this.gids.has(user.gid)) return true;
    return [...this.gids].some((g) => this.members.get(g)?.has(user.name));
  }
}
