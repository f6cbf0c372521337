import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { AccessPolicy } from '../../src/core/access-policy.js';
import type { Config } from '../../src/core/config.js';
import { RootLogger } from '../../src/core/logger.js';
import { makeTempDir } from '../harness/temp-dir.js';

describe('AccessPolicy', () => {
  const dir = makeTempDir();
  after(() => dir.remove());
  writeFileSync(
    dir.file('passwd'),
    'root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\ncarol:x:1002:500::/:/bin/sh\n',
  );
  writeFileSync(dir.file('group'), 'root:x:0:\nalice:x:1000:\nbob:x:1001:\nvmdevd-admin:x:500:bob\n');
  const lines: string[] = [];
  const policy = (users: string[], groups: string[]) =>
    new AccessPolicy(
      { access: { users, groups } } as unknown as Config,
      new RootLogger('debug', { write: (l) => lines.push(l) }),
      {
        passwd: dir.file('passwd'),
        group: dir.file('group'),
      },
    );

  it('allows the listed users by name or uid, and the daemon user', () => {
    const p = policy(['alice', '1001'], []);
    assert.equal(p.isAllowed({ uid: 1000 }), true);
    assert.equal(p.isAllowed({ uid: 1001 }), true);
    assert.equal(p.isAllowed({ uid: 1002 }), false);
    assert.equal(p.isAllowed({ uid: process.getuid!() }), true);
  });

  it('allows members of a listed group: by the groups the bus reports, or else by the account files', () => {
    const p = policy([], ['vmdevd-admin']);
    assert.equal(p.isAllowed({ uid: 1001 }), true, 'bob is listed as a member');
    assert.equal(p.isAllowed({ uid: 1002 }), true, "carol's primary group");
    assert.equal(p.isAllowed({ uid: 1000 }), false);
    assert.equal(p.isAllowed({ uid: 1000, gids: [1000, 500] }), true, 'the kernel says alice is in it now');
    assert.equal(p.isAllowed({ uid: 1001, gids: [1001] }), false, 'the kernel says bob is not, whatever the file says');
  });

  it('warns about names that do not exist', () => {
    lines.length = 0;
    const p = policy(['mallory'], ['wheel']);
    assert.ok(lines.some((l) => /allowed user does not exist; ignoring it user=mallory/.test(l)));
    assert.ok(lines.some((l) => /allowed group does not exist; nobody gets access through it group=wheel/.test(l)));
    assert.equal(p.isAllowed({ uid: 1000 }), false);
  });
});
