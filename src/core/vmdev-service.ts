/**
 * The semantics of the D-Bus contract, without the bus: `TestMethod` and
 * `AttachDevices` (validate, resolve, start one job per device),
 * `GetDevices`, writes of `TestProperty`, and the one log line per request.
 */
import { inject, injectable } from 'inversify';
import { DESIRED_STATES, type DesiredState, type Logger } from '../plugin-api.js';
import { BackendRegistry, type BackendHost } from './backend-registry.js';
import { Clock } from './clock.js';
import { DeviceJobService, type JobKind } from './device-job-service.js';
import { parseDeviceMap } from './device-spec.js';
import { VmdevError, errorMessage, invalidArgs } from './errors.js';
import { RootLogger } from './logger.js';
import { StateHub, type VmEntry } from './state-hub.js';

export const MAX_SELECTOR_LENGTH = 1024;

/** The answer to `TestMethod` or `AttachDevices`, and what starts the jobs it accepted. */
export interface Acceptance {
  readonly accepted: boolean;
  start(): void;
}

const NOT_ACCEPTED: Acceptance = { accepted: false, start: () => {} };

/** Who is calling, for logs (and for access checks made before the call reaches here). */
export interface Caller {
  /** The caller's unique bus name, e.g. `:1.42`. */
  readonly name: string;
}

@injectable()
export class VmdevService {
  private readonly log: Logger;
  private closed = false;
  /** Requests waiting for backends' types (see `PublishOptions`); each ends at shutdown. */
  private readonly typeWaiters = new Set<() => void>();

  constructor(
    @inject(StateHub) private readonly hub: StateHub,
    @inject(BackendRegistry) private readonly registry: BackendRegistry,
    @inject(DeviceJobService) private readonly jobs: DeviceJobService,
    @inject(Clock) private readonly clock: Clock,
    @inject(RootLogger) logger: RootLogger,
  ) {
    this.log = logger.child('request');
  }

  /**
   * `TestMethod`: validates every device, then resolves the selector, then
   * accepts one detach per device. `accepted` is false when no VM matches;
   * `start()` hands the accepted detaches to the backend. The caller replies
   * between the two, so the reply does not wait for the detaches to be set
   * up; nothing can fail in between, and a shutdown in between still gives
   * every accepted device its outcome. Throws `Failed` once shutdown began.
   * While a backend's VM types are still being read the answer is a promise
   * (see `typesKnown`); requests keep their order.
   */
  detach(caller: Caller, selector: unknown, devices: unknown): Acceptance | Promise<Acceptance> {
    return this.request('detach', 'TestMethod', caller, selector, devices);
  }

  /**
   * `AttachDevices`, the mirror of `TestMethod`: every device validated for
   * an attach, the selector resolved, then one attach accepted per device.
   * A backend that cannot attach is `NotSupported`, and nothing starts.
   */
  attach(caller: Caller, selector: unknown, devices: unknown): Acceptance | Promise<Acceptance> {
    return this.request('attach', 'AttachDevices', caller, selector, devices);
  }

  /**
   * `GetDevices`: the disks, interfaces and host devices of the one VM the
   * selector names, label → tokens. `VmNotFound` when none matches;
   * `NotSupported` when its backend cannot list devices; `Timeout` when it
   * does not answer within `detachTimeoutSeconds`.
   */
  async devices(caller: Caller, selector: unknown): Promise<Record<string, string[]>> {
    try {
      checkSelector(selector);
      await this.typesKnown();
      const target = this.resolve(selector);
      if (target === undefined) throw new VmdevError('VmNotFound', `no VM matches ${JSON.stringify(selector)}`);
      const devices = await this.registry.listDevices(target.host, target.entry.vm, this.jobs.timeoutMs);
      this.logRequest(
        'GetDevices',
        caller,
        { selector: text(selector) },
        `${Object.keys(devices).length} devices of ${target.entry.key}`,
      );
      return devices;
    } catch (err) {
      this.logRequest('GetDevices', caller, { selector: text(selector) }, errorSummary(err));
      throw err;
    }
  }

  private request(
    kind: JobKind,
    member: string,
    caller: Caller,
    selector: unknown,
    devices: unknown,
  ): Acceptance | Promise<Acceptance> {
    const labels =
      devices !== null && typeof devices === 'object' ? Object.keys(devices).slice(0, 16).join(',') : undefined;
    const fields = { selector: text(selector), devices: labels };
    const refused = (err: unknown): never => {
      this.logRequest(member, caller, fields, errorSummary(err));
      throw err;
    };
    const accept = (specs: ReturnType<typeof parseDeviceMap>): Acceptance => {
      const target = this.resolve(selector);
      if (target === undefined) {
        this.logRequest(member, caller, fields, 'no such VM (false)');
        return NOT_ACCEPTED;
      }
      if (kind === 'attach' && !this.registry.canAttach(target.host)) {
        throw new VmdevError(
          'NotSupported',
          `VM ${JSON.stringify(target.entry.key)} belongs to backend "${target.host.id}", which cannot attach devices`,
        );
      }
      // From here each device is owed an outcome: accept() makes the jobs now
      // (shutdown ends them), start() hands them to the backend.
      const start = this.jobs.accept(kind, target.host, target.entry, specs);
      this.logRequest(member, caller, fields, `accepted for ${target.entry.key}`);
      return { accepted: true, start };
    };
    try {
      // What is wrong with the request itself is said at once, before any wait.
      const specs = parseDeviceMap(devices, kind);
      checkSelector(selector);
      const wait = this.typesKnown();
      if (wait === undefined) return accept(specs);
      return wait.then(() => accept(specs)).catch(refused);
    } catch (err) {
      return refused(err);
    }
  }

  /**
   * A write of `TestProperty`: VM key → desired state. The whole map is
   * validated before anything is applied; then every change is requested
   * and the call settles when the backends accepted (or refused) them.
   */
  async setStates(caller: Caller, desired: unknown): Promise<void> {
    const summary =
      desired !== null && typeof desired === 'object'
        ? Object.entries(desired)
            .slice(0, 16)
            .map(([k, v]) => `${k}=${String(v)}`)
            .join(',')
        : undefined;
    try {
      const changes = this.validateStates(desired);
      if (this.closed) throw new VmdevError('Failed', 'vmdevd is shutting down and accepts no new requests');
      const results = await Promise.allSettled(changes.map((c) => this.registry.setState(c.host, c.entry.vm, c.state)));
      const failures = results.flatMap((r, i) =>
        r.status === 'rejected' ? [{ change: changes[i]!, err: r.reason as unknown }] : [],
      );
      if (failures.length > 0) {
        const first = failures[0]!;
        const kind = first.err instanceof VmdevError ? first.err.kind : 'Failed';
        const text = failures.map((f) => `${f.change.entry.key}: ${errorMessage(f.err)}`).join('; ');
        const applied = changes.length - failures.length;
        throw new VmdevError(
          kind,
          `${failures.length} of ${changes.length} state changes failed (${applied} applied): ${text}`,
        );
      }
      this.logRequest('Set TestProperty', caller, { states: summary }, 'applied');
    } catch (err) {
      this.logRequest('Set TestProperty', caller, { states: summary }, errorSummary(err));
      throw err;
    }
  }

  /**
   * Nothing is accepted from now on: the daemon is shutting down. Requests
   * check this where they start something, after any wait (such as the
   * caller's credentials), so none slips in behind the shutdown.
   */
  close(): void {
    this.closed = true;
    this.jobs.shutdown();
    for (const wake of [...this.typeWaiters]) wake();
  }

  /**
   * `undefined` when no connected backend is still reading its VMs' types;
   * else a promise that settles when none is, when those backends lose
   * their connection, at shutdown, or after `detachTimeoutSeconds`
   * (whichever comes first: `resolve` then refuses what is still unknown).
   */
  private typesKnown(): Promise<void> | undefined {
    if (this.closed || this.registry.typesPending().length === 0) return undefined;
    return new Promise<void>((done) => {
      const check = () => {
        if (this.closed || this.registry.typesPending().length === 0) wake();
      };
      const learned = this.registry.onDidLearnTypes(check);
      const health = this.registry.onDidChangeHealth(check);
      const timer = this.clock.setTimeout(() => wake(), this.jobs.timeoutMs);
      const wake = () => {
        learned.dispose();
        health.dispose();
        timer.cancel();
        this.typeWaiters.delete(wake);
        done();
      };
      this.typeWaiters.add(wake);
    });
  }

  private validateStates(desired: unknown): Array<{ entry: VmEntry; host: BackendHost; state: DesiredState }> {
    if (typeof desired !== 'object' || desired === null || Array.isArray(desired)) {
      throw invalidArgs('TestProperty takes a map of VM name to state (a{ss})');
    }
    const changes = [];
    for (const [key, state] of Object.entries(desired as Record<string, unknown>)) {
      const entry = this.hub.byKey(key);
      if (entry === undefined) throw invalidArgs(`no VM is named ${JSON.stringify(key)}`);
      if (typeof state !== 'string' || !(DESIRED_STATES as readonly string[]).includes(state)) {
        throw invalidArgs(
          `VM ${JSON.stringify(key)}: unknown state ${JSON.stringify(state)} (expected ${DESIRED_STATES.join(', ')})`,
        );
      }
      const host = this.registry.host(entry.backendId)!;
      if (!host.health.connected) {
        throw new VmdevError(
          'BackendUnavailable',
          `VM ${JSON.stringify(key)} belongs to backend "${host.id}", which is ${host.healthText()}`,
        );
      }
      changes.push({ entry, host, state: state as DesiredState });
    }
    return changes;
  }

  /** Resolves a selector to one VM; `undefined` when none matches. */
  private resolve(selector: unknown): { entry: VmEntry; host: BackendHost } | undefined {
    checkSelector(selector);
    if (this.closed) throw new VmdevError('Failed', 'vmdevd is shutting down and accepts no new requests');
    const reading = this.registry.typesPending();
    if (reading.length > 0) {
      const which = reading.map((h) => `"${h.id}"`).join(', ');
      throw new VmdevError(
        'BackendUnavailable',
        `backend ${which} is still reading the types of its VMs, which any selector may name; try again`,
      );
    }
    const lower = selector.toLowerCase();
    const matches = this.hub
      .entries()
      .filter(
        (e) =>
          e.key === selector ||
          e.vm.name === selector ||
          e.vm.type === selector ||
          (e.vm.uuid !== undefined && e.vm.uuid.toLowerCase() === lower),
      );
    if (matches.length > 1) {
      const names = matches.map((m) => m.key);
      const shown =
        names.length > 10 ? `${names.slice(0, 10).join(', ')} and ${names.length - 10} more` : names.join(', ');
      throw new VmdevError(
        'AmbiguousSelector',
        `selector ${JSON.stringify(selector)} matches ${names.length} VMs: ${shown}`,
      );
    }
    const match = matches[0];
    if (match === undefined) {
      const down = this.registry.hosts().filter((h) => !h.health.connected);
      if (down.length > 0) {
        const which = down.map((h) => `"${h.id}" (${h.healthText()})`).join(', ');
        throw new VmdevError(
          'BackendUnavailable',
          `no VM matches ${JSON.stringify(selector)}, but backend ${which} may have it`,
        );
      }
      return undefined;
    }
    const host = this.registry.host(match.backendId)!;
    if (!host.health.connected) {
      throw new VmdevError(
        'BackendUnavailable',
        `VM ${JSON.stringify(match.key)} belongs to backend "${host.id}", which is ${host.healthText()}`,
      );
    }
    return { entry: match, host };
  }

  private logRequest(what: string, caller: Caller, fields: Record<string, string | undefined>, result: string): void {
    this.log.info(what, { caller: caller.name, ...fields, result });
  }
}

function text(value: unknown): string | undefined {
  return typeof value === 'string' ? value.slice(0, 200) : undefined;
}

function errorSummary(err: unknown): string {
  return err instanceof VmdevError ? `${err.kind}: ${err.message}` : `error: ${errorMessage(err)}`;
}

/** Refuses a selector no VM could have: empty, not a string, or too long. */
function checkSelector(selector: unknown): asserts selector is string {
  if (typeof selector !== 'string' || selector.length === 0) {
    throw invalidArgs('the selector is empty; give a VM name, UUID or type');
  }
  if (selector.length > MAX_SELECTOR_LENGTH) {
    throw invalidArgs(`the selector is ${selector.length} characters long, at most ${MAX_SELECTOR_LENGTH} are allowed`);
  }
}
