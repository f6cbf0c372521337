/**
 * Loads the plugins the config names, creates one backend per config entry
 * and stands between the core and each backend: every call into a backend is
 * isolated, so a plugin that fails to load, targets another API version or
 * throws shows up in `Backends` and in the log, never as a daemon crash.
 */
import { realpathSync } from 'node:fs';
import { sep } from 'node:path';
import type { Ajv } from 'ajv';
import { inject, injectable, optional } from 'inversify';
import {
  BackendError,
  DESCRIPTIVE_PARAMS,
  FAILURE_KINDS,
  VM_STATES,
  type DeviceType,
  type BackendContext,
  type BackendHealth,
  type DesiredState,
  type DeviceOutcome,
  type DeviceRequest,
  type FailureKind,
  type Logger,
  type VmBackend,
  type VmInfo,
} from '../plugin-api.js';
import { cleanText, isCleanName } from './clean-text.js';
import { Config, describeSchemaError, type BackendConfig } from './config.js';
import { LABEL_PATTERN, descriptiveParams, parseDevice } from './device-spec.js';
import type { Disposable } from './disposable.js';
import { ConfigError, VmdevError, errorMessage } from './errors.js';
import { Emitter, type Event } from './event.js';
import { RootLogger } from './logger.js';
import { BeforePluginImport, loadPlugin, packageVersion, type LoadedPlugin } from './plugin-loader.js';
import { StateHub } from './state-hub.js';
import {
  SHIPPED_OPTIONS_AJV_OPTIONS,
  ajvAtRunTime,
  closedSchema,
  precompiledOptionsValidator,
} from './options-schema.js';

/** Where in-repo plugins are looked up (`plugins/` of the package). */
export const BuiltinPluginDir = Symbol('BuiltinPluginDir');

const START_TIMEOUT_MS = 10_000;
/** The longest VM name a backend may publish (libvirt allows far less in practice). */
const MAX_VM_NAME_LENGTH = 1024;
const STOP_TIMEOUT_MS = 5_000;

/** One configured backend and what the core knows about it. */
export class BackendHost {
  health: BackendHealth = { connected: false, reason: 'starting' };
  backend: VmBackend | undefined;
  plugin: LoadedPlugin | undefined;
  /** Set when the backend can never run (load or create failure). */
  failure: string | undefined;
  ready = false;
  stopped = false;
  /** Its last list was published with `typesPending`: selectors wait for the types. */
  typesPending = false;

  constructor(
    readonly config: BackendConfig,
    readonly log: Logger,
  ) {}

  get id(): string {
    return this.config.id;
  }

  /** `connected` or `disconnected: <reason>`, as the `Backends` property shows it. */
  healthText(): string {
    return this.health.connected ? 'connected' : `disconnected: ${this.health.reason}`;
  }
}

function isBackendError(err: unknown): err is { kind: FailureKind; message: string } {
  if (err instanceof BackendError) return true;
  const e = err as { name?: unknown; kind?: unknown; message?: unknown } | null;
  return (
    typeof e === 'object' &&
    e !== null &&
    e.name === 'BackendError' &&
    typeof e.message === 'string' &&
    (FAILURE_KINDS as readonly unknown[]).includes(e.kind)
  );
}

class TimeoutError extends Error {}

/** A listing's tokens without those that describe a disk or an interface (given that the type is known). */
function namingTokens(tokens: unknown): unknown {
  if (!Array.isArray(tokens)) return tokens;
  const type = (tokens as unknown[]).find((t) => typeof t === 'string' && t.startsWith('type='));
  const descriptive = DESCRIPTIVE_PARAMS[(type as string | undefined)?.slice(5) as DeviceType] ?? [];
  return (tokens as unknown[]).filter(
    (t) => typeof t !== 'string' || !descriptive.includes(t.slice(0, Math.max(0, t.indexOf('=')))),
  );
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${ms / 1000} s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

@injectable()
export class BackendRegistry implements Disposable {
  private hostList: BackendHost[];
  private readonly plugins = new Map<string, Promise<LoadedPlugin>>();
  /** For third-party plugins' option schemas: each is checked against JSON Schema's meta-schema. */
  private checkingAjv: Ajv | undefined;
  /** For the plugins shipped in the package (see options-schema.ts), when the build did not precompile theirs. */
  private trustingAjv: Ajv | undefined;
  private readonly onDidChangeHealthEmitter = new Emitter<void>();
  private readonly onDidBecomeReadyEmitter = new Emitter<void>();
  private readonly onDidLearnTypesEmitter = new Emitter<void>();
  private readonly log: Logger;

  /** Fires when any backend's health changed. */
  readonly onDidChangeHealth: Event<void> = this.onDidChangeHealthEmitter.event;
  /** Fires when a backend whose types were pending published them. */
  readonly onDidLearnTypes: Event<void> = this.onDidLearnTypesEmitter.event;

  constructor(
    @inject(Config) private readonly config: Config,
    @inject(StateHub) private readonly hub: StateHub,
    @inject(RootLogger) private readonly rootLogger: RootLogger,
    @inject(BuiltinPluginDir) private readonly builtinDir: string,
    @inject(BeforePluginImport) @optional() private readonly beforeImport?: BeforePluginImport,
  ) {
    this.log = rootLogger.child('backends');
    this.hostList = config.backends.map((c) => this.newHost(c));
  }

  hosts(): readonly BackendHost[] {
    return this.hostList;
  }

  host(id: string): BackendHost | undefined {
    return this.hostList.find((h) => h.id === id);
  }

  /**
   * The connected backends whose VMs' types are still being read (see
   * `PublishOptions`): a selector cannot be resolved until they are known.
   */
  typesPending(): BackendHost[] {
    return this.hostList.filter((h) => h.typesPending && h.health.connected && !h.stopped);
  }

  /** Backend id → `connected` or `disconnected: <reason>`. */
  healthMap(): Record<string, string> {
    const map: Record<string, string> = {};
    for (const host of this.hostList) map[host.id] = host.healthText();
    return map;
  }

  /**
   * Loads every plugin named in the config and creates the backends. A plugin
   * that cannot be loaded marks its backends failed; options that do not fit
   * a plugin's schema are a config error and throw `ConfigError`.
   */
  async load(): Promise<void> {
    const prepared: Array<LoadedPlugin | undefined> = [];
    for (const [index, host] of this.hostList.entries()) prepared.push(await this.prepare(host, index));
    for (const [index, host] of this.hostList.entries()) {
      const plugin = prepared[index];
      if (plugin !== undefined) this.create(host, plugin);
    }
  }

  /** Loads every plugin and checks every backend's options; returns the backends whose plugin cannot load. */
  async check(): Promise<string[]> {
    const problems: string[] = [];
    for (const [index, host] of this.hostList.entries()) {
      if ((await this.prepare(host, index)) === undefined) {
        problems.push(`backends[${index}] (${host.id}): ${host.failure ?? 'cannot be loaded'}`);
      }
    }
    return problems;
  }

  /**
   * Starts every backend (or those given). Resolves once each one has
   * published its first list, finished starting, failed, or taken longer
   * than the start timeout.
   */
  async start(timeoutMs = START_TIMEOUT_MS, hosts: readonly BackendHost[] = this.hostList): Promise<void> {
    const waits = hosts.map(async (host) => {
      if (host.backend === undefined) return;
      const ready = new Promise<void>((resolve) => {
        if (host.ready) return resolve();
        const sub = this.onDidBecomeReadyEmitter.event(() => {
          if (host.ready) {
            sub.dispose();
            resolve();
          }
        });
      });
      const started = this.guard(host, 'start', () => host.backend!.start()).catch((err: unknown) => {
        this.fail(host, `start failed: ${errorMessage(err)}`);
      });
      await withTimeout(Promise.race([ready, started]), timeoutMs, `backend ${host.id}`).catch((err: unknown) => {
        host.log.warn('backend is slow to start; going on without its list', { reason: errorMessage(err) });
      });
      this.markReady(host);
    });
    await Promise.all(waits);
  }

  /**
   * Applies a reloaded config's backends: an entry that is unchanged keeps
   * its backend as it is; a removed one is stopped and its VMs leave the map;
   * a new or changed one is created and started. Every new entry's plugin is
   * loaded and its options checked first: a `ConfigError` then leaves
   * everything as it was. Pending detaches of a stopped backend end as its
   * stop() settles them, or at their deadline.
   */
  async reconfigure(
    entries: readonly BackendConfig[],
  ): Promise<{ added: string[]; removed: string[]; changed: string[] }> {
    const current = new Map(this.hostList.map((h) => [h.id, h]));
    const next = entries.map((entry) => {
      const kept = current.get(entry.id);
      // A backend that could never run (its plugin did not load, its start
      // was refused) is tried again, even with its entry unchanged.
      return kept !== undefined && kept.failure === undefined && sameBackendConfig(kept.config, entry)
        ? kept
        : this.newHost(entry);
    });
    const fresh = next.filter((h) => !this.hostList.includes(h));
    const gone = this.hostList.filter((h) => !next.includes(h));
    const prepared = new Map<BackendHost, LoadedPlugin | undefined>();
    for (const host of fresh)
      prepared.set(
        host,
        await this.prepare(
          host,
          entries.findIndex((e) => e.id === host.id),
        ),
      );

    for (const host of gone) {
      await this.stopHost(host);
      this.hub.dropBackend(host.id);
    }
    this.hostList = next;
    for (const host of fresh) {
      const plugin = prepared.get(host);
      if (plugin !== undefined) this.create(host, plugin);
    }
    this.onDidChangeHealthEmitter.fire();
    await this.start(START_TIMEOUT_MS, fresh);
    const ids = (hosts: BackendHost[]) => hosts.map((h) => h.id);
    return {
      added: ids(fresh.filter((h) => !current.has(h.id))),
      removed: ids(gone.filter((h) => !next.some((n) => n.id === h.id))),
      changed: ids(fresh.filter((h) => current.has(h.id))),
    };
  }

  /** True once every backend has its first list or gave up. */
  allReady(): boolean {
    return this.hostList.every((h) => h.ready);
  }

  /** Stops the backends, in the reverse order of the config. */
  async stop(): Promise<void> {
    for (const host of [...this.hostList].reverse()) await this.stopHost(host);
  }

  private async stopHost(host: BackendHost): Promise<void> {
    if (host.stopped) return;
    host.stopped = true;
    // Requests waiting for its types wait no longer.
    if (host.typesPending) this.onDidLearnTypesEmitter.fire();
    if (host.backend === undefined) return;
    await withTimeout(
      this.guard(host, 'stop', () => host.backend!.stop()),
      STOP_TIMEOUT_MS,
      `stopping backend ${host.id}`,
    ).catch((err: unknown) => host.log.warn('backend did not stop cleanly', { reason: errorMessage(err) }));
  }

  /** Runs a detach in the backend; never rejects. */
  async detach(host: BackendHost, request: DeviceRequest): Promise<DeviceOutcome> {
    const given = descriptiveParams(request.device);
    if (given.length > 0 && host.plugin !== undefined && host.plugin.apiVersion < 2) {
      // Such a plugin cannot check them: the detach could take a device
      // other than the one the client described.
      return {
        ok: false,
        error: 'NotSupported',
        message: `backend "${host.id}" (plugin API ${host.plugin.apiVersion}) cannot check ${given.join(', ')}; detach without them`,
      };
    }
    return this.runDevice(host, 'detach', () => host.backend!.detach(request));
  }

  /** Runs an attach in the backend; never rejects. `NotSupported` when the backend cannot attach. */
  async attach(host: BackendHost, request: DeviceRequest): Promise<DeviceOutcome> {
    if (host.backend !== undefined && typeof host.backend.attach !== 'function') {
      return { ok: false, error: 'NotSupported', message: this.cannot(host, 'attach devices') };
    }
    return this.runDevice(host, 'attach', () => host.backend!.attach!(request));
  }

  /** Whether the backend can attach devices (it implements `attach`). */
  canAttach(host: BackendHost): boolean {
    return typeof host.backend?.attach === 'function';
  }

  /**
   * The VM's devices, label → tokens, as the backend lists them; rejects with
   * a `VmdevError` (`NotSupported` for a backend without `listDevices`,
   * `Timeout` after `timeoutMs`). Only what the device grammar accepts is
   * passed on: a device the backend describes wrongly is left out and logged.
   */
  async listDevices(host: BackendHost, vm: VmInfo, timeoutMs: number): Promise<Record<string, string[]>> {
    const backend = host.backend;
    if (backend === undefined || host.stopped) {
      throw new VmdevError('BackendUnavailable', `backend "${host.id}" is ${host.healthText()}`);
    }
    if (typeof backend.listDevices !== 'function') {
      throw new VmdevError('NotSupported', this.cannot(host, 'list devices'));
    }
    let listed: unknown;
    try {
      listed = await withTimeout(
        this.guard(host, 'listDevices', () => backend.listDevices!(vm)),
        timeoutMs,
        `listing the devices of VM "${vm.name}"`,
      );
    } catch (err) {
      if (isBackendError(err)) throw new VmdevError(err.kind, err.message);
      if (err instanceof TimeoutError) throw new VmdevError('Timeout', `backend "${host.id}": ${err.message}`);
      host.log.warn('listDevices failed with an unexpected error', {
        error: errorMessage(err),
        stack: (err as Error)?.stack,
      });
      throw new VmdevError('Failed', `backend "${host.id}" failed: ${errorMessage(err)}`);
    }
    const devices: Record<string, string[]> = {};
    for (const item of Array.isArray(listed) ? (listed as unknown[]) : []) {
      const { label, tokens } = (item ?? {}) as { label?: unknown; tokens?: unknown };
      try {
        if (typeof label !== 'string' || !LABEL_PATTERN.test(label)) throw new Error('an invalid label');
        if (Object.hasOwn(devices, label)) throw new Error('a label listed twice');
        devices[label] = this.checkListed(host, vm, label, tokens);
      } catch (err) {
        host.log.warn('leaving out a device the backend listed wrongly', {
          vm: vm.name,
          label: cleanText(String(label), 80),
          reason: errorMessage(err),
        });
      }
    }
    return devices;
  }

  /**
   * What GetDevices lists must be taken back by TestMethod as it is. A
   * device whose descriptive tokens the grammar refuses (a path with a
   * `..`, a network name with a space) is listed by the tokens that name
   * it only: it can still be detached, and an attach of it is refused
   * rather than made of half a description. Throws for anything else.
   */
  private checkListed(host: BackendHost, vm: VmInfo, label: string, tokens: unknown): string[] {
    try {
      parseDevice(label, tokens, 'detach');
      return [...(tokens as string[])];
    } catch (err) {
      const naming = namingTokens(tokens);
      parseDevice(label, naming, 'detach');
      host.log.debug('listing a device by the tokens that name it only', {
        vm: vm.name,
        label,
        reason: errorMessage(err),
      });
      return [...(naming as string[])];
    }
  }

  private cannot(host: BackendHost, what: string): string {
    const plugin = host.plugin;
    const by = plugin !== undefined ? ` (plugin "${plugin.name}", plugin API ${plugin.apiVersion})` : '';
    return `backend "${host.id}"${by} cannot ${what}`;
  }

  /** Runs one device call of the backend and checks what it answers; never rejects. */
  private async runDevice(
    host: BackendHost,
    what: 'detach' | 'attach',
    call: () => Promise<DeviceOutcome>,
  ): Promise<DeviceOutcome> {
    if (host.backend === undefined || host.stopped) {
      return { ok: false, error: 'BackendUnavailable', message: `backend "${host.id}" is ${host.healthText()}` };
    }
    try {
      const outcome = await this.guard(host, what, call);
      if (outcome?.ok === true) return { ok: true };
      if (outcome?.ok === false && (FAILURE_KINDS as readonly unknown[]).includes(outcome.error)) {
        return { ok: false, error: outcome.error, message: String(outcome.message) };
      }
      host.log.warn(`backend returned a malformed ${what} outcome`, { outcome: JSON.stringify(outcome) });
      return { ok: false, error: 'Failed', message: `backend "${host.id}" returned no valid outcome` };
    } catch (err) {
      if (isBackendError(err)) return { ok: false, error: err.kind, message: err.message };
      host.log.warn(`${what} failed with an unexpected error`, {
        error: errorMessage(err),
        stack: (err as Error)?.stack,
      });
      return { ok: false, error: 'Failed', message: `backend "${host.id}" failed: ${errorMessage(err)}` };
    }
  }

  /** Applies a desired state; rejects with a `VmdevError`. */
  async setState(host: BackendHost, vm: VmInfo, state: DesiredState): Promise<void> {
    if (host.backend === undefined || host.stopped) {
      throw new VmdevError('BackendUnavailable', `backend "${host.id}" is ${host.healthText()}`);
    }
    try {
      await this.guard(host, 'setState', () => host.backend!.setState(vm, state));
    } catch (err) {
      if (isBackendError(err)) throw new VmdevError(err.kind, err.message);
      host.log.warn('setState failed with an unexpected error', {
        error: errorMessage(err),
        stack: (err as Error)?.stack,
      });
      throw new VmdevError('Failed', `backend "${host.id}" failed: ${errorMessage(err)}`);
    }
  }

  /**
   * Marks the backend whose plugin code appears in the error's stack as
   * crashed. Returns false when no plugin can be blamed.
   */
  attributeCrash(err: unknown): boolean {
    const stack = (err as Error | undefined)?.stack ?? '';
    let blamed = false;
    for (const host of this.hostList) {
      const root = host.plugin?.root;
      // The directory itself, not a longer name that begins with it (vmdevd-plugin-kvm, vmdevd-plugin-kvm-arm).
      if (root !== undefined && stack.includes(root + sep)) {
        this.setHealth(host, { connected: false, reason: `plugin crashed: ${errorMessage(err)}` });
        blamed = true;
      }
    }
    return blamed;
  }

  dispose(): void {
    this.onDidChangeHealthEmitter.dispose();
    this.onDidBecomeReadyEmitter.dispose();
    this.onDidLearnTypesEmitter.dispose();
  }

  private newHost(entry: BackendConfig): BackendHost {
    return new BackendHost(entry, this.rootLogger.child(`backend ${entry.id}`));
  }

  /** The host's plugin, loaded once per plugin spec, with the host's options checked against its schema. */
  /** The shipped plugins' directory as a real path, as a plugin's `root` is. */
  private realBuiltinDir(): string {
    try {
      return realpathSync(this.builtinDir);
    } catch {
      return this.builtinDir;
    }
  }

  private async prepare(host: BackendHost, index: number): Promise<LoadedPlugin | undefined> {
    const spec = host.config.plugin;
    let loading = this.plugins.get(spec);
    if (loading === undefined) {
      loading = loadPlugin(spec, this.config.baseDir, this.builtinDir, this.beforeImport);
      this.plugins.set(spec, loading);
      // A plugin that failed to load is tried again at the next reload.
      loading.catch(() => this.plugins.delete(spec));
    }
    let plugin: LoadedPlugin;
    try {
      plugin = await loading;
    } catch (err) {
      this.fail(host, errorMessage(err));
      return undefined;
    }
    host.plugin = plugin;
    const schema = plugin.factory.optionsSchema;
    if (schema === undefined) return plugin;
    let validate;
    try {
      const closed = closedSchema(schema);
      const shipped = plugin.root.startsWith(this.realBuiltinDir() + sep);
      validate = shipped
        ? ((await precompiledOptionsValidator(plugin.root, closed)) ??
          (this.trustingAjv ??= new (ajvAtRunTime())(SHIPPED_OPTIONS_AJV_OPTIONS)).compile(closed))
        : (this.checkingAjv ??= new (ajvAtRunTime())({ allErrors: false, strict: false })).compile(closed);
    } catch (err) {
      this.fail(host, `plugin "${plugin.name}" has an invalid options schema: ${errorMessage(err)}`);
      return undefined;
    }
    if (!validate(host.config.options)) {
      throw new ConfigError(
        `${this.config.source}: ${describeSchemaError(validate.errors![0]!, `backends[${index}]`)}`,
      );
    }
    return plugin;
  }

  private create(host: BackendHost, plugin: LoadedPlugin): void {
    try {
      host.backend = plugin.factory.create(this.contextFor(host));
      this.log.info('backend created', {
        id: host.id,
        plugin: plugin.name,
        version: packageVersion(plugin.root),
        from: plugin.root,
      });
    } catch (err) {
      this.fail(host, `plugin "${plugin.name}" could not create the backend: ${errorMessage(err)}`);
    }
  }

  private guard<T>(host: BackendHost, what: string, fn: () => Promise<T>): Promise<T> {
    try {
      const result = fn();
      if (!(result instanceof Promise) && typeof (result as { then?: unknown })?.then !== 'function') {
        return Promise.reject(new Error(`${what}() did not return a promise`));
      }
      return Promise.resolve(result);
    } catch (err) {
      host.log.debug(`${what}() threw synchronously`, { error: errorMessage(err) });
      // A plugin may throw anything; the caller classifies it as it is.
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
      return Promise.reject(err);
    }
  }

  private fail(host: BackendHost, reason: string): void {
    host.failure = reason;
    host.log.error('backend unavailable', { reason });
    this.setHealth(host, { connected: false, reason });
    this.markReady(host);
  }

  private markReady(host: BackendHost): void {
    if (host.ready) return;
    host.ready = true;
    this.onDidBecomeReadyEmitter.fire();
  }

  private setHealth(host: BackendHost, health: BackendHealth): void {
    const before = host.healthText();
    host.health = health.connected
      ? { connected: true }
      : { connected: false, reason: cleanText(health.reason || 'unknown reason') };
    if (host.healthText() !== before) {
      host.log.info('health changed', { health: host.healthText() });
      this.onDidChangeHealthEmitter.fire();
    }
  }

  private contextFor(host: BackendHost): BackendContext {
    const active = () => !host.stopped;
    // What a backend publishes goes on the bus as keys and values: a name the
    // bus cannot carry (a control character, a lone surrogate) would cost
    // every client its TestSignal, so such a VM is left out, and a type or
    // UUID of that kind is dropped.
    const check = (vm: VmInfo): VmInfo | undefined => {
      if (
        typeof vm?.name !== 'string' ||
        vm.name.length === 0 ||
        vm.name.length > MAX_VM_NAME_LENGTH ||
        vm.name.includes('/') ||
        !isCleanName(vm.name)
      ) {
        host.log.warn('ignoring a VM with an invalid name', { name: cleanText(String(vm?.name), 200) });
        return undefined;
      }
      let checked: VmInfo = vm;
      for (const field of ['uuid', 'type'] as const) {
        const value = vm[field];
        if (value !== undefined && (typeof value !== 'string' || !isCleanName(value) || value.length > 256)) {
          host.log.warn(`VM reported with an invalid ${field}; leaving it out`, { vm: vm.name });
          checked = { ...checked, [field]: undefined };
        }
      }
      if (!(VM_STATES as readonly string[]).includes(vm.state)) {
        host.log.warn('VM reported with an unknown state; showing nostate', {
          vm: vm.name,
          state: cleanText(String(vm.state), 200),
        });
        return { ...checked, state: 'nostate' };
      }
      return checked;
    };
    return {
      id: host.id,
      options: host.config.options,
      log: host.log,
      publish: (vms, options) => {
        if (!active()) return;
        const valid = (Array.isArray(vms) ? vms : []).map(check).filter((v): v is VmInfo => v !== undefined);
        const learnedTypes = host.typesPending && options?.typesPending !== true;
        host.typesPending = options?.typesPending === true;
        this.hub.publish(host.id, valid);
        this.markReady(host);
        if (learnedTypes) this.onDidLearnTypesEmitter.fire();
      },
      update: (vm) => {
        if (!active()) return;
        // The path of every state event: a VM the hub holds with the same
        // name, UUID and type (checked when they came) needs only its state
        // checked.
        const held = typeof vm?.name === 'string' ? this.hub.vm(host.id, vm.name) : undefined;
        const valid =
          held !== undefined && held.uuid === vm.uuid && held.type === vm.type && KNOWN_STATES.has(vm.state)
            ? vm
            : check(vm);
        if (valid) this.hub.update(host.id, valid);
      },
      remove: (name) => {
        if (active()) this.hub.remove(host.id, String(name));
      },
      setHealth: (health) => {
        if (active()) this.setHealth(host, health);
      },
    };
  }
}

const KNOWN_STATES: ReadonlySet<unknown> = new Set(VM_STATES);

function sameBackendConfig(a: BackendConfig, b: BackendConfig): boolean {
  return a.plugin === b.plugin && JSON.stringify(a.options) === JSON.stringify(b.options);
}
