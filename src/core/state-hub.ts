/**
 * The state hub merges every backend's VMs into one map, VM key → state,
 * and announces changes.
 *
 * Keys: a VM's key is its name. When VMs of the same name exist in two or
 * more backends, each of them is keyed `<backend id>/<name>` for as long as
 * the names collide. Names never contain `/`, so keys are unique, and they
 * depend only on the current VMs, never on the order events arrived in.
 *
 * Announcements: every change is announced at once, unless announcements
 * are held (see `hold`: the D-Bus frontend holds them while a state signal
 * is still waiting to be written); changes meanwhile are announced
 * together, with the map as it then is, when the last hold is released, so
 * the last state is never lost. An announcement says only that the map
 * changed: listeners ask for the map (`map`), or for how it differs from
 * the one they last saw (`version`, `patchSince`).
 *
 * Cost: a VM that changes, of a name its backend already had, keeps every
 * key as it was, so its entries are the last ones with that VM's entry
 * replaced (an array copy, no sort), and a state that differs from the one
 * last announced is announced without comparing the two; the map object
 * is built only when asked for (at 10,000 VMs it takes V8 about 1.5 ms),
 * and `patchSince` tells a listener the one value that changed, so that it
 * can encode only that (the D-Bus frontend does). Any other change (a VM
 * added or removed, a backend's republish), and every change while
 * announcements are held, builds the entries again, once, when they are
 * next asked for. `bench/state-change.ts` measures it.
 */
import { injectable } from 'inversify';
import type { VmInfo } from '../plugin-api.js';
import type { Disposable } from './disposable.js';
import { Emitter, type Event } from './event.js';

export type StateMap = Readonly<Record<string, string>>;

/** One VM's change of state: the map's key of that VM and its new state. */
export interface MapPatch {
  readonly key: string;
  readonly value: string;
}

export interface VmEntry {
  readonly key: string;
  readonly backendId: string;
  readonly vm: VmInfo;
}

@injectable()
export class StateHub implements Disposable {
  private readonly backends = new Map<string, Map<string, VmInfo>>();
  private entriesCache: readonly VmEntry[] | undefined;
  /** Where each VM is in `entriesCache` (`<backend id>\0<name>`), made at the first patch of those entries. */
  private positions: Map<string, number> | undefined;
  /** The map of `entriesCache`, built when asked for. */
  private mapCache: StateMap | undefined;
  private versionCount = 0;
  /** The last change that was one VM's change of state: the versions before and after it. */
  private lastPatch: { readonly from: number; readonly to: number; readonly patch: MapPatch } | undefined;
  /** The entries of the map last announced. */
  private lastAnnounced: readonly VmEntry[] | undefined;
  private forceNext = false;
  private holds = 0;
  private pending = false;
  private readonly onDidChangeMapEmitter = new Emitter<void>();

  /** Fires when the map changed (held back while held, see above). */
  readonly onDidChangeMap: Event<void> = this.onDidChangeMapEmitter.event;

  /** Changes whenever the map may have changed: the map and its encodings can be kept by it. */
  get version(): number {
    return this.versionCount;
  }

  /** Replaces a backend's VMs. Always announced, even when equal: it is a republish. */
  publish(backendId: string, vms: readonly VmInfo[]): void {
    const byName = new Map<string, VmInfo>();
    for (const vm of vms) byName.set(vm.name, vm);
    this.backends.set(backendId, byName);
    this.forceNext = true;
    this.changed();
  }

  update(backendId: string, vm: VmInfo): void {
    let byName = this.backends.get(backendId);
    if (byName === undefined) {
      byName = new Map();
      this.backends.set(backendId, byName);
    }
    const old = byName.get(vm.name);
    if (old && old.state === vm.state && old.uuid === vm.uuid && old.type === vm.type) return;
    byName.set(vm.name, vm);
    if (old === undefined || !this.patch(backendId, vm)) this.changed();
  }

  /** Forgets a backend and its VMs (it was removed from the config). */
  dropBackend(backendId: string): void {
    if (this.backends.delete(backendId)) this.changed();
  }

  remove(backendId: string, name: string): void {
    if (this.backends.get(backendId)?.delete(name)) this.changed();
  }

  /** Every VM with its key, sorted by key. */
  entries(): readonly VmEntry[] {
    if (this.entriesCache === undefined) {
      const owners = new Map<string, number>();
      for (const byName of this.backends.values()) {
        for (const name of byName.keys()) owners.set(name, (owners.get(name) ?? 0) + 1);
      }
      const entries: VmEntry[] = [];
      for (const [backendId, byName] of this.backends) {
        for (const vm of byName.values()) {
          const key = owners.get(vm.name)! > 1 ? `${backendId}/${vm.name}` : vm.name;
          entries.push({ key, backendId, vm });
        }
      }
      entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      this.entriesCache = entries;
    }
    return this.entriesCache;
  }

  /** The map VM key → state, as `TestProperty` shows it. */
  map(): StateMap {
    if (this.mapCache === undefined) {
      const map: Record<string, string> = {};
      for (const entry of this.entries()) map[entry.key] = entry.vm.state;
      this.mapCache = Object.freeze(map);
    }
    return this.mapCache;
  }

  /**
   * When the current map is the map of `version` with one VM's state
   * changed: its key and new state. The two maps have the same keys in the
   * same order (`Object.keys`), and only that key's value differs.
   */
  patchSince(version: number): MapPatch | undefined {
    const last = this.lastPatch;
    return last !== undefined && last.from === version && last.to === this.versionCount ? last.patch : undefined;
  }

  /** The VM as its backend last reported it, or `undefined`. */
  vm(backendId: string, name: string): VmInfo | undefined {
    return this.backends.get(backendId)?.get(name);
  }

  /** The current entry of a VM, or `undefined` if it is gone. */
  find(backendId: string, name: string): VmEntry | undefined {
    const vm = this.backends.get(backendId)?.get(name);
    if (vm === undefined) return undefined;
    return this.entries().find((e) => e.backendId === backendId && e.vm.name === name);
  }

  /** The entry with exactly this key. */
  byKey(key: string): VmEntry | undefined {
    return this.entries().find((e) => e.key === key);
  }

  /**
   * Holds announcements until the returned function is called (once; more
   * calls do nothing). Changes meanwhile cost no copy of the entries: they
   * are built and announced once, when the last hold is released.
   */
  hold(): () => void {
    this.holds++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds === 0 && this.pending) {
        this.pending = false;
        this.announce();
      }
    };
  }

  dispose(): void {
    this.onDidChangeMapEmitter.dispose();
  }

  private changed(): void {
    this.entriesCache = undefined;
    this.positions = undefined;
    this.mapCache = undefined;
    this.versionCount++;
    this.lastPatch = undefined;
    this.settle();
  }

  /**
   * A VM of a name its backend already had, changed: its entry replaced in
   * the entries as they are, every key the same. False when there are no
   * entries built to patch, or announcements are held (a burst: the
   * entries are built once, at the release, instead of copied per change).
   */
  private patch(backendId: string, vm: VmInfo): boolean {
    const entries = this.entriesCache;
    if (entries === undefined || this.holds > 0) return false;
    if (this.positions === undefined) {
      const positions = new Map<string, number>();
      for (let i = 0; i < entries.length; i++) positions.set(`${entries[i]!.backendId}\0${entries[i]!.vm.name}`, i);
      this.positions = positions;
    }
    const at = this.positions.get(`${backendId}\0${vm.name}`);
    if (at === undefined) return false;
    const { key, vm: was } = entries[at]!;
    const next = entries.slice();
    next[at] = { key, backendId, vm };
    this.entriesCache = next;
    if (was.state === vm.state) {
      // Its uuid or type changed: the map is the same.
      if (entries === this.lastAnnounced) this.lastAnnounced = next;
      return true;
    }
    // It differs from the entries last announced in this one: no need to compare them.
    if (entries === this.lastAnnounced) this.forceNext = true;
    // Built again from the entries when asked for (no sort): copying an
    // object of many keys takes V8 longer than building it.
    this.mapCache = undefined;
    const from = this.versionCount++;
    this.lastPatch = { from, to: this.versionCount, patch: { key, value: vm.state } };
    this.settle();
    return true;
  }

  private settle(): void {
    if (this.holds > 0) {
      this.pending = true;
      return;
    }
    this.announce();
  }

  private announce(): void {
    const entries = this.entries();
    if (
      !this.forceNext &&
      this.lastAnnounced !== undefined &&
      (entries === this.lastAnnounced || sameMap(entries, this.lastAnnounced))
    )
      return;
    this.forceNext = false;
    this.lastAnnounced = entries;
    this.onDidChangeMapEmitter.fire();
  }
}

/** Whether two lists of entries, each sorted by key, make the same map. */
function sameMap(a: readonly VmEntry[], b: readonly VmEntry[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i]!.key !== b[i]!.key || a[i]!.vm.state !== b[i]!.vm.state) return false;
  return true;
}
