/**
 * The D-Bus frontend: the only part of vmdevd that knows dbus-next.
 *
 * The interface is configured from the interface XML with
 * `Interface.configureMembers`, and dbus-next's `MessageBus` matches the
 * replies to our own calls (the bus daemon's) and requests the name. Every
 * method call that reaches the connection is answered here, on any path:
 * our interface, Properties, Introspectable (with the argument names and
 * annotations dbus-next's own introspection drops) and Peer, and an
 * UnknownObject/UnknownInterface/UnknownMethod error for anything else, so
 * that dbus-next's dispatch never answers (it replies to errors with stack
 * traces, and twice to a write of a read-only property). The signals are
 * written here too (`sendTrusted`); dbus-next sends only the
 * PropertiesChanged of `Backends`.
 */
import { readFileSync } from 'node:fs';
import dbus from 'dbus-next';
import { inject, injectable } from 'inversify';
import { builder, create } from 'xmlbuilder2';
import type { Logger } from '../plugin-api.js';
import { AccessPolicy, type Credentials } from '../core/access-policy.js';
import { BackendRegistry } from '../core/backend-registry.js';
import { Config } from '../core/config.js';
import { DeviceJobService, type JobFinished } from '../core/device-job-service.js';
import { DisposableStore, type Disposable } from '../core/disposable.js';
import { Emitter, type Event } from '../core/event.js';
import { VmdevError, errorMessage, invalidArgs } from '../core/errors.js';
import { RootLogger } from '../core/logger.js';
import { StateHub, type StateMap } from '../core/state-hub.js';
import { VmdevService, type Acceptance } from '../core/vmdev-service.js';
import { cleanText } from '../core/clean-text.js';
import { DBUS_ERRORS } from '../protocol.js';
import {
  onConnectionEnd,
  onOversized,
  openBus,
  sendSignalNow,
  sendTrusted,
  whenWritten,
  type MessageBus,
  type TrustedMessage,
} from './bus-connection.js';
import { CurrentStateBodies, StateBodyEncoder } from './state-bodies.js';
import type { UndecodableMessage } from './wire/fast-connection.js';
import { SignalTemplate } from './wire/encoder.js';
import {
  PROPERTY_READ_ONLY,
  UNKNOWN_INTERFACE,
  UNKNOWN_METHOD,
  UNKNOWN_OBJECT,
  errorName,
  toDBusError,
} from './error-map.js';
import { INTERFACE_NAME, OBJECT_PATH, type InterfaceDefinition } from './interface-definition.js';

export const InterfaceDefinitionToken = Symbol('InterfaceDefinition');

const { Interface } = dbus.interface;
const { Message, MessageType, Variant } = dbus;
type Message = dbus.Message;

const PROPERTIES = 'org.freedesktop.DBus.Properties';
/** The state signal, its header encoded once. */
const TEST_SIGNAL = new SignalTemplate({
  path: OBJECT_PATH,
  interface: INTERFACE_NAME,
  member: 'TestSignal',
  signature: 'a{ss}',
});
const PEER = 'org.freedesktop.DBus.Peer';
const INTROSPECTABLE = 'org.freedesktop.DBus.Introspectable';
const PROPERTY_SIGNATURES: Readonly<Record<string, string>> = { Get: 'ss', GetAll: 's', Set: 'ssv' };
const PROPERTY_METHODS = new Set(Object.keys(PROPERTY_SIGNATURES));
const STANDARD_INTERFACE_NAMES = new Set([PEER, INTROSPECTABLE, PROPERTIES]);
const NO_REPLY_EXPECTED = 0x1;
/**
 * The longest call vmdevd reads. The largest valid request (256 devices of 16
 * tokens of 256 characters) is about 1.1 MB; a longer message is dropped as
 * it arrives, so it cannot make the daemon hold its size in memory, and a
 * call gets LimitsExceeded.
 */
export const MAX_CALL_BYTES = 4 * 1024 * 1024;
const LIMITS_EXCEEDED = DBUS_ERRORS.LimitsExceeded;
/** What the PropertiesChanged of TestProperty lists as invalidated with it. */
export const INVALIDATED_WITH_STATES: readonly string[] = ['Vms'];

/** Unique names are never reused on a bus, so credentials can be kept; this bounds the memory. */
const CREDENTIAL_CACHE_SIZE = 1024;
const INTROSPECTION_HEADER =
  '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n';

/** What the generated dbus-next interface reads its property values from. */
interface PropertySource {
  testProperty(): StateMap;
  backends(): Record<string, string>;
  vms(): Record<string, Record<string, string>>;
}

type ModuleInterface = dbus.interface.Interface & {
  TestSignal(states: StateMap): void;
  DeviceDetached(vm: string, device: string): void;
  DeviceDetachFailed(vm: string, device: string, error: string, message: string): void;
  DeviceAttached(vm: string, device: string): void;
  DeviceAttachFailed(vm: string, device: string, error: string, message: string): void;
};

/** The outcome signals of each direction. */
const OUTCOME_SIGNALS = {
  detach: { ok: 'DeviceDetached', failed: 'DeviceDetachFailed' },
  attach: { ok: 'DeviceAttached', failed: 'DeviceAttachFailed' },
} as const;

/** A method call dbus-next's dispatch should never see; if one gets there, it must not send a stack trace. */
function notDispatchedHere(member: string): never {
  throw new dbus.DBusError(errorName('Failed'), `${member} could not be handled; the details are in the log of vmdevd`);
}

/**
 * Builds a dbus-next interface class whose members are exactly those of the
 * interface XML. A member in the XML that vmdevd does not implement is an
 * error at start, so the file and the code cannot drift apart silently.
 */
function createInterface(def: InterfaceDefinition, source: PropertySource): ModuleInterface {
  class Module extends Interface {
    get TestProperty(): StateMap {
      return source.testProperty();
    }
    get Backends(): Record<string, string> {
      return source.backends();
    }
    get Vms(): Record<string, Record<string, string>> {
      return source.vms();
    }
    // Calls never reach dbus-next's dispatch: the frontend's handler answers
    // them first. Should one get here, dbus-next must not answer it with the
    // stack trace it sends for any error that is not a DBusError.
    TestMethod(): never {
      notDispatchedHere('TestMethod');
    }
    GetDevices(): never {
      notDispatchedHere('GetDevices');
    }
    AttachDevices(): never {
      notDispatchedHere('AttachDevices');
    }
    // The signals are sent by the frontend itself (sendTrusted); these give
    // dbus-next the members configureMembers declares.
    TestSignal(states: StateMap): StateMap {
      return states;
    }
    DeviceDetached(vm: string, device: string): string[] {
      return [vm, device];
    }
    DeviceDetachFailed(vm: string, device: string, error: string, message: string): string[] {
      return [vm, device, error, message];
    }
    DeviceAttached(vm: string, device: string): string[] {
      return [vm, device];
    }
    DeviceAttachFailed(vm: string, device: string, error: string, message: string): string[] {
      return [vm, device, error, message];
    }
  }
  const implemented = (name: string) => Object.getOwnPropertyDescriptor(Module.prototype, name) !== undefined;
  const missing = [...def.methods.keys(), ...def.properties.keys(), ...def.signals.keys()].filter(
    (n) => !implemented(n),
  );
  if (missing.length > 0) {
    throw new VmdevError(
      'Failed',
      `the interface file declares ${missing.join(', ')}, which this vmdevd does not implement`,
    );
  }
  Module.configureMembers({
    methods: Object.fromEntries(
      [...def.methods.values()].map((m) => [m.name, { inSignature: m.inSignature, outSignature: m.outSignature }]),
    ),
    properties: Object.fromEntries(
      [...def.properties.values()].map((p) => [p.name, { signature: p.type, access: p.access }]),
    ),
    signals: Object.fromEntries([...def.signals.values()].map((s) => [s.name, { signature: s.signature }])),
  });
  return new Module(def.name);
}

@injectable()
export class DbusFrontend implements Disposable {
  private readonly log: Logger;
  private readonly disposables = new DisposableStore();
  private bus: MessageBus | undefined;
  private iface: ModuleInterface | undefined;
  /** The answer to Introspect on our object, built at the first one. */
  private introspection: string | undefined;
  private accepting = true;
  private announced = false;
  private closed = false;
  private readonly onDidLoseConnectionEmitter = new Emitter<Error>();
  /** Fires once if the bus connection breaks after `connect()` (not when `close()` ends it). */
  readonly onDidLoseConnection: Event<Error> = this.onDidLoseConnectionEmitter.event;
  private readonly credentialCache = new Map<string, Credentials>();
  /**
   * The encoded messages of the current state map (see state-bodies.ts): a
   * change is encoded once for its two signals and every `Get` until the next.
   */
  private readonly stateBodies: CurrentStateBodies;
  /** Holds the hub's announcements while a state signal is still waiting to be written. */
  private stateHold: (() => void) | undefined;
  private methodHandler: Disposable | undefined;
  private undecodableWindow = { start: -Infinity, logged: 0, suppressed: 0 };

  constructor(
    @inject(Config) private readonly config: Config,
    @inject(InterfaceDefinitionToken) private readonly def: InterfaceDefinition,
    @inject(VmdevService) private readonly service: VmdevService,
    @inject(StateHub) private readonly hub: StateHub,
    @inject(BackendRegistry) private readonly registry: BackendRegistry,
    @inject(DeviceJobService) private readonly jobs: DeviceJobService,
    @inject(AccessPolicy) private readonly access: AccessPolicy,
    @inject(RootLogger) logger: RootLogger,
  ) {
    this.log = logger.child('dbus');
    this.stateBodies = new CurrentStateBodies(new StateBodyEncoder(INTERFACE_NAME, INVALIDATED_WITH_STATES), hub);
  }

  /** Connects to the bus; `onDidLoseConnection` tells if the connection breaks later. */
  async connect(): Promise<void> {
    this.bus = await openBus(this.config.bus, {
      maxIncomingLength: MAX_CALL_BYTES,
      onUndecodable: (m) => this.undecodable(m),
    });
    onOversized(this.bus, ({ header, length, limit }) => {
      this.log.warn('dropped a message that is too long', {
        caller: header.sender,
        member: header.member,
        bytes: length,
      });
      if (
        header.type === MessageType.METHOD_CALL &&
        (header.flags & NO_REPLY_EXPECTED) === 0 &&
        header.sender !== undefined
      ) {
        sendTrusted(this.bus!, {
          type: MessageType.ERROR,
          errorName: LIMITS_EXCEEDED,
          replySerial: header.serial,
          destination: header.sender,
          signature: 's',
          body: [`the call is ${length} bytes long; vmdevd reads calls of at most ${limit} bytes`],
        });
      }
    });
    this.bus.on('error', (err: unknown) => this.lost(err));
    onConnectionEnd(this.bus, () => this.lost(new Error('the bus closed the connection')));
    this.log.info('connected to the bus', {
      bus: this.config.bus,
      uniqueName: (this.bus as unknown as { name: string }).name,
    });
  }

  /**
   * Exports the object, starts answering calls and forwarding events, and
   * requests the bus name. Outcome signals are forwarded from here on, so no
   * outcome of an accepted call can be lost.
   */
  async publish(): Promise<void> {
    const bus = this.bus!;
    this.iface = createInterface(this.def, {
      testProperty: () => this.hub.map(),
      backends: () => this.registry.healthMap(),
      vms: () => this.vmDetails(),
    });
    bus.export(OBJECT_PATH, this.iface);
    // Dispatching lasts as long as the connection (see close()); only the
    // forwarding of events below ends when shutdown begins.
    const handler = (msg: Message) => this.dispatch(msg);
    bus.addMethodHandler(handler);
    this.methodHandler = { dispose: () => bus.removeMethodHandler(handler) };
    this.disposables.add(this.jobs.onDidFinish((e) => this.emitOutcome(e)));
    this.disposables.add(this.hub.onDidChangeMap(() => this.announced && this.emitStates()));
    this.disposables.add(
      this.registry.onDidChangeHealth(() => {
        if (this.announced) this.emitPropertiesChanged({ Backends: this.registry.healthMap() });
      }),
    );

    const reply = await bus.requestName(this.config.busName, dbus.NameFlag.DO_NOT_QUEUE);
    if (reply !== dbus.RequestNameReply.PRIMARY_OWNER && reply !== dbus.RequestNameReply.ALREADY_OWNER) {
      throw new VmdevError('Failed', `the bus name ${this.config.busName} is owned by another process`);
    }
    this.log.info('owns the bus name', { name: this.config.busName });
  }

  /** Emits the first complete map, once; every change is emitted from then on. */
  announce(): void {
    if (this.announced) return;
    this.announced = true;
    this.emitStates();
  }

  /** New calls are refused from now on (the daemon is shutting down). */
  stopAccepting(): void {
    this.accepting = false;
  }

  /**
   * Releases the bus name and disconnects; signals already sent are flushed
   * first. Calls keep being answered until the connection is gone (refused
   * as shutting down, where they would change something): without our
   * dispatch, dbus-next would answer them itself, with a stack trace.
   */
  async close(): Promise<void> {
    if (this.closed || this.bus === undefined) return;
    this.closed = true;
    this.disposables.dispose();
    try {
      // The reply to ReleaseName also means every message sent before it has left.
      await Promise.race([this.bus.releaseName(this.config.busName), new Promise((r) => setTimeout(r, 2000))]);
      this.log.info('released the bus name', { name: this.config.busName });
    } catch (err) {
      this.log.warn('could not release the bus name', { error: errorMessage(err) });
    }
    this.bus.disconnect();
    this.methodHandler?.dispose();
    this.methodHandler = undefined;
  }

  dispose(): void {
    this.disposables.dispose();
    this.methodHandler?.dispose();
    this.methodHandler = undefined;
  }

  private lost(err: unknown): void {
    if (this.closed) return;
    this.closed = true;
    const error = err instanceof Error ? err : new Error(String(err));
    this.log.error('lost the bus connection', { error: error.message });
    this.onDidLoseConnectionEmitter.fire(error);
  }

  /**
   * Sends `TestSignal` and `PropertiesChanged` with the map, and holds the
   * hub's announcements until both are written: when the bus keeps up, that
   * is right after this turn of the event loop and every change goes out at
   * once; when it does not, the changes meanwhile go out together, with the
   * last map, as soon as it has taken these. TestSignal is written first, on
   * its own and at once, before anything else this event leads to:
   * PropertiesChanged, which says the same, is encoded and follows in the
   * next write.
   */
  private emitStates(): void {
    if (this.closed) return;
    const bodies = this.stateBodies.get();
    sendSignalNow(this.bus!, TEST_SIGNAL, bodies.testSignal);
    const held = this.stateHold === undefined;
    if (held) this.stateHold = this.hub.hold();
    process.nextTick(() => {
      if (!this.closed) this.signal(PROPERTIES, 'PropertiesChanged', 'sa{sv}as', bodies.propertiesChanged);
      if (!held) return;
      whenWritten(this.bus!, () => {
        const release = this.stateHold;
        this.stateHold = undefined;
        release?.();
      });
    });
  }

  /** `body`: its values, or the body already encoded for `signature`. */
  private signal(iface: string, member: string, signature: string, body: readonly unknown[] | Buffer): void {
    sendTrusted(this.bus!, {
      type: MessageType.SIGNAL,
      path: OBJECT_PATH,
      interface: iface,
      member,
      signature,
      ...bodyOf(body),
    });
  }

  private emitPropertiesChanged(changed: Record<string, unknown>, invalidated: string[] = []): void {
    if (this.closed) return;
    Interface.emitPropertiesChanged(this.iface!, changed, invalidated);
  }

  private vmDetails(): Record<string, Record<string, string>> {
    const details: Record<string, Record<string, string>> = {};
    for (const { key, backendId, vm } of this.hub.entries()) {
      const d: Record<string, string> = { name: vm.name, state: vm.state, backend: backendId };
      if (vm.uuid !== undefined) d['uuid'] = vm.uuid;
      if (vm.type !== undefined) d['type'] = vm.type;
      details[key] = d;
    }
    return details;
  }

  private emitOutcome(e: JobFinished): void {
    if (this.closed) {
      this.log.warn('outcome not sent: the bus connection is gone, no client will see it', {
        vm: e.vm,
        device: e.device,
        outcome: e.outcome.ok ? `${e.kind}ed` : e.outcome.error,
      });
      return;
    }
    const names = OUTCOME_SIGNALS[e.kind];
    try {
      if (e.outcome.ok) this.signal(INTERFACE_NAME, names.ok, 'ss', [e.vm, e.device]);
      else
        this.signal(INTERFACE_NAME, names.failed, 'ssss', [
          e.vm,
          e.device,
          errorName(e.outcome.error),
          e.outcome.message,
        ]);
    } catch (err) {
      // The core cleans what it passes on; should a string still not encode,
      // the client gets the outcome with every string cleaned, not nothing.
      this.log.error('an outcome signal did not encode; sending it cleaned', { error: errorMessage(err) });
      const name = e.outcome.ok ? names.ok : names.failed;
      const body = e.outcome.ok
        ? [cleanText(e.vm), cleanText(e.device)]
        : [cleanText(e.vm), cleanText(e.device), errorName(e.outcome.error), cleanText(e.outcome.message)];
      this.signal(INTERFACE_NAME, name, e.outcome.ok ? 'ss' : 'ssss', body);
    }
  }

  /**
   * A message that did not decode was skipped (a call among them was
   * answered InvalidArgs by the connection). One line per sender and
   * reason, at most a few per minute: whoever sends them must not fill
   * the journal.
   */
  private undecodable({ header, reason }: UndecodableMessage): void {
    const now = performance.now();
    if (now - this.undecodableWindow.start > 60_000) {
      if (this.undecodableWindow.suppressed > 0) {
        this.log.warn('refused more messages that could not be read', { count: this.undecodableWindow.suppressed });
      }
      this.undecodableWindow = { start: now, logged: 0, suppressed: 0 };
    }
    if (this.undecodableWindow.logged >= 10) {
      this.undecodableWindow.suppressed++;
      return;
    }
    this.undecodableWindow.logged++;
    this.log.warn('refused a message that could not be read', {
      caller: header?.sender,
      member: header?.member,
      signature: header?.signature,
      reason,
    });
  }

  // ---- dispatch -------------------------------------------------------------

  /**
   * Answers every method call that reaches the connection, so that none is
   * left to dbus-next's own dispatch (which answers errors with stack traces
   * and Peer calls with serials of its own). Signals and replies go on to
   * dbus-next.
   */
  private dispatch(msg: Message): boolean {
    if (msg.type !== MessageType.METHOD_CALL) return false;
    try {
      this.route(msg);
    } catch (err) {
      this.replyError(msg, err, msg.member);
    }
    return true;
  }

  private route(msg: Message): void {
    const iface = msg.interface;
    const member = msg.member;
    // Peer is the connection's, on any path (as libdbus and GDBus answer it).
    if (iface === PEER || (!iface && (member === 'Ping' || member === 'GetMachineId'))) return this.callPeer(msg);
    if (msg.path === OBJECT_PATH) {
      if (iface === INTERFACE_NAME || (!iface && this.def.methods.has(member))) return this.callOwn(msg);
      if (iface === PROPERTIES || (!iface && PROPERTY_METHODS.has(member))) return this.callProperties(msg);
      if (iface === INTROSPECTABLE || (!iface && member === 'Introspect')) return this.callIntrospect(msg, true);
      this.sendError(msg, UNKNOWN_INTERFACE, `${OBJECT_PATH} has no interface ${JSON.stringify(iface ?? '')}`);
      return;
    }
    if (isAncestorPath(msg.path, OBJECT_PATH)) {
      if (iface === INTROSPECTABLE || (!iface && member === 'Introspect')) return this.callIntrospect(msg, false);
      this.sendError(msg, UNKNOWN_METHOD, `${msg.path} has only ${INTROSPECTABLE} and ${PEER}`);
      return;
    }
    this.sendError(msg, UNKNOWN_OBJECT, `vmdevd has no object ${msg.path}; its object is ${OBJECT_PATH}`);
  }

  private callPeer(msg: Message): void {
    if (msg.signature) throw invalidArgs(`${PEER}.${msg.member} takes no arguments`);
    if (msg.member === 'Ping') return this.reply(msg, '', []);
    if (msg.member === 'GetMachineId') return this.reply(msg, 's', [machineId()]);
    this.sendError(msg, UNKNOWN_METHOD, `${PEER} has no method ${JSON.stringify(msg.member)}`);
  }

  private callIntrospect(msg: Message, ours: boolean): void {
    if (msg.member !== 'Introspect') {
      this.sendError(msg, UNKNOWN_METHOD, `${INTROSPECTABLE} has no method ${JSON.stringify(msg.member)}`);
      return;
    }
    if (msg.signature) throw invalidArgs(`${INTROSPECTABLE}.Introspect takes no arguments`);
    // Built at the first Introspect, not at start: xmlbuilder2's serializer
    // takes about 25 ms the first time it runs, before the name is owned.
    const xml = ours
      ? (this.introspection ??= this.buildIntrospection())
      : childNodeIntrospection(msg.path, OBJECT_PATH);
    this.reply(msg, 's', [xml]);
  }

  private callOwn(msg: Message): void {
    const method = this.def.methods.get(msg.member);
    if (method === undefined) {
      this.sendError(msg, UNKNOWN_METHOD, `${INTERFACE_NAME} has no method ${JSON.stringify(msg.member)}`);
      return;
    }
    const signature = msg.signature ?? '';
    if (signature !== method.inSignature) {
      throw invalidArgs(`${method.name} takes (${method.inSignature}), not (${signature})`);
    }
    if (!this.accepting) throw new VmdevError('Failed', 'vmdevd is shutting down and accepts no new requests');
    const caller = { name: msg.sender };
    switch (method.name) {
      case 'GetDevices':
        // A read, open to everyone as the properties are.
        this.service
          .devices(caller, msg.body[0])
          .then(
            (devices) => this.reply(msg, method.outSignature, [devices]),
            (err: unknown) => this.replyError(msg, err, method.name),
          )
          // The backend may answer after the connection closed (shutdown): nobody is left to tell.
          .catch((err: unknown) => this.log.warn('GetDevices could not be answered', { error: errorMessage(err) }));
        return;
      case 'TestMethod':
      case 'AttachDevices':
        this.withAccess(msg, method.name, () => {
          const answer = (acceptance: Acceptance) => {
            this.reply(msg, method.outSignature, [acceptance.accepted]);
            // The reply's write is queued first: the jobs start right behind it.
            process.nextTick(() => acceptance.start());
          };
          const acceptance =
            method.name === 'TestMethod'
              ? this.service.detach(caller, msg.body[0], msg.body[1])
              : this.service.attach(caller, msg.body[0], msg.body[1]);
          if (!(acceptance instanceof Promise)) return answer(acceptance);
          // A backend is still reading its VMs' types: the answer waits for them.
          acceptance.then(answer).catch((err: unknown) => this.replyError(msg, err, method.name));
        });
        return;
      default:
        throw new VmdevError('Failed', `${method.name} is declared in the interface file but has no handler`);
    }
  }

  /**
   * Runs `fn` if the caller may change things, at once when its
   * credentials are known, else after asking the bus; errors become replies.
   */
  private withAccess(msg: Message, what: string, fn: () => void): void {
    const run = (creds: Credentials) => {
      if (!this.access.isAllowed(creds)) {
        this.log.warn('access denied', { caller: msg.sender, uid: creds.uid, call: what });
        throw new VmdevError(
          'AccessDenied',
          `uid ${creds.uid} may not call ${what} (allowed: ${this.access.allowedText()})`,
        );
      }
      fn();
    };
    const cached = this.credentialCache.get(msg.sender);
    if (cached !== undefined) {
      run(cached);
      return;
    }
    this.credentialsOf(msg.sender)
      .then(run)
      .catch((err: unknown) => this.replyError(msg, err, what));
  }

  /** The caller's uid and groups, from the bus daemon. */
  private async credentialsOf(sender: string): Promise<Credentials> {
    const ask = (member: string) =>
      this.bus!.call(
        new Message({
          destination: 'org.freedesktop.DBus',
          path: '/org/freedesktop/DBus',
          interface: 'org.freedesktop.DBus',
          member,
          signature: 's',
          body: [sender],
        }),
      );
    let creds: Credentials;
    try {
      const reply = await ask('GetConnectionCredentials');
      const dict = reply!.body[0] as Record<string, { value: unknown }>;
      creds = { uid: dict['UnixUserID']!.value as number, gids: dict['UnixGroupIDs']?.value as number[] | undefined };
    } catch {
      const reply = await ask('GetConnectionUnixUser');
      creds = { uid: reply!.body[0] as number };
    }
    if (typeof creds.uid !== 'number') throw new VmdevError('AccessDenied', 'the bus did not say who the caller is');
    if (this.credentialCache.size >= CREDENTIAL_CACHE_SIZE)
      this.credentialCache.delete(this.credentialCache.keys().next().value!);
    this.credentialCache.set(sender, creds);
    return creds;
  }

  private callProperties(msg: Message): void {
    const signature = msg.signature ?? '';
    const body = msg.body;
    const want = PROPERTY_SIGNATURES[msg.member];
    if (want === undefined) {
      this.sendError(msg, UNKNOWN_METHOD, `${PROPERTIES} has no method ${JSON.stringify(msg.member)}`);
      return;
    }
    if (signature !== want) throw invalidArgs(`Properties.${msg.member} takes (${want}), not (${signature})`);
    const ifaceName = body[0] as string;
    if (ifaceName !== INTERFACE_NAME && ifaceName !== '') {
      // The standard interfaces have no properties; any other is not here.
      if (!STANDARD_INTERFACE_NAMES.has(ifaceName)) {
        this.sendError(msg, UNKNOWN_INTERFACE, `${OBJECT_PATH} has no interface ${JSON.stringify(ifaceName)}`);
      } else if (msg.member === 'GetAll') {
        this.reply(msg, 'a{sv}', [{}]);
      } else {
        throw invalidArgs(`${ifaceName} has no property ${JSON.stringify(body[1])}`);
      }
      return;
    }

    if (msg.member === 'GetAll') {
      const all: Record<string, unknown> = {};
      for (const p of this.def.properties.values()) {
        if (p.access !== 'write') all[p.name] = new Variant(p.type, this.propertyValue(p.name));
      }
      this.reply(msg, 'a{sv}', [all]);
      return;
    }

    const name = body[1] as string;
    const prop = this.def.properties.get(name);
    if (prop === undefined) throw invalidArgs(`${INTERFACE_NAME} has no property ${JSON.stringify(name)}`);

    if (msg.member === 'Get') {
      if (prop.access === 'write') throw invalidArgs(`property ${name} cannot be read`);
      // TestProperty's reply is encoded once per change of the map (see state-bodies.ts).
      if (name === 'TestProperty') this.reply(msg, 'v', this.stateBodies.get().getReply);
      else this.reply(msg, 'v', [new Variant(prop.type, this.propertyValue(name))]);
      return;
    }

    // Set
    if (prop.access === 'read') {
      this.sendError(msg, PROPERTY_READ_ONLY, `property ${name} is read-only`);
      return;
    }
    const value = body[2] as { signature: string; value: unknown };
    if (value.signature !== prop.type)
      throw invalidArgs(`property ${name} has type ${prop.type}, not ${value.signature}`);
    if (!this.accepting) throw new VmdevError('Failed', 'vmdevd is shutting down and accepts no new requests');
    this.withAccess(msg, `Set ${name}`, () => {
      this.service.setStates({ name: msg.sender }, value.value).then(
        () => this.reply(msg, '', []),
        (err: unknown) => this.replyError(msg, err, `Set ${name}`),
      );
    });
  }

  private propertyValue(name: string): unknown {
    if (name === 'TestProperty') return this.hub.map();
    if (name === 'Backends') return this.registry.healthMap();
    if (name === 'Vms') return this.vmDetails();
    throw new VmdevError('Failed', `property ${name} has no value`);
  }

  /** `body`: its values, or the body already encoded for `signature`. */
  private reply(msg: Message, signature: string, body: readonly unknown[] | Buffer): void {
    if ((msg.flags & NO_REPLY_EXPECTED) !== 0 || this.bus === undefined) return;
    sendTrusted(this.bus, {
      type: MessageType.METHOD_RETURN,
      replySerial: msg.serial!,
      destination: msg.sender,
      signature,
      ...bodyOf(body),
    });
  }

  private replyError(msg: Message, err: unknown, context: string): void {
    const mapped = toDBusError(err, this.log, context);
    this.sendError(msg, mapped.name, mapped.message);
  }

  private sendError(msg: Message, name: string, text: string): void {
    if ((msg.flags & NO_REPLY_EXPECTED) !== 0 || this.bus === undefined) return;
    sendTrusted(this.bus, {
      type: MessageType.ERROR,
      errorName: name,
      replySerial: msg.serial!,
      destination: msg.sender,
      signature: 's',
      body: [text],
    });
  }

  /** Our object: the standard interfaces, and ours exactly as the interface file has it. */
  private buildIntrospection(): string {
    const root = create(STANDARD_INTERFACES).root();
    root.import(builder(this.def.element as never));
    return INTROSPECTION_HEADER + root.end({ headless: true });
  }
}

const STANDARD_INTERFACES = `<node>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="properties" type="a{sv}" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
</node>`;

/** True when `path` is a proper ancestor of `of` ('/' and '/org' of '/org/example/dbustest'). */
function isAncestorPath(path: string, of: string): boolean {
  return path === '/' || (of.startsWith(path) && of[path.length] === '/');
}

/** The introspection of an ancestor of our object: its one child on the way down. */
function childNodeIntrospection(path: string, of: string): string {
  const rest = of.slice(path === '/' ? 1 : path.length + 1);
  const child = rest.split('/')[0]!;
  const root = create('<node/>').root();
  root.ele('interface', { name: INTROSPECTABLE }).ele('method', { name: 'Introspect' }).ele('arg', {
    name: 'xml_data',
    type: 's',
    direction: 'out',
  });
  root.ele('interface', { name: PEER }).ele('method', { name: 'Ping' });
  root.ele('node', { name: child });
  return INTROSPECTION_HEADER + root.end({ headless: true });
}

let cachedMachineId: string | undefined;

/** The host's machine id, as libdbus answers Peer.GetMachineId. */
function machineId(): string {
  if (cachedMachineId !== undefined) return cachedMachineId;
  for (const file of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
    try {
      const id = readFileSync(file, 'utf8').trim();
      if (/^[0-9a-f]{32}$/.test(id)) return (cachedMachineId = id);
    } catch {
      // try the next
    }
  }
  throw new VmdevError('Failed', 'this host has no machine id (/etc/machine-id or /var/lib/dbus/machine-id)');
}

/** A message's body fields: its values, or the body already encoded. */
function bodyOf(body: readonly unknown[] | Buffer): Pick<TrustedMessage, 'body' | 'rawBody'> {
  return Buffer.isBuffer(body) ? { rawBody: body } : { body };
}
