/** libvirt's errors as the plugin API's failure kinds. */
import { BackendError, type FailureKind } from 'vmdevd/plugin-api';
import { constants as C, LibvirtError } from './binding.js';

/**
 * True for errors that mean the connection to libvirt is gone: those of
 * libvirt's RPC and remote layers (the client's transport), a connection
 * that is closed or invalid, and our binding's own "closed". Not
 * VIR_ERR_SYSTEM_ERROR as such: libvirt uses it for any failed system call,
 * in the daemon as much as in the transport; an ambiguous one is settled
 * with `virConnectIsAlive` (see LibvirtBackend.isLost).
 */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof LibvirtError) {
    return (
      err.domain === C.VIR_FROM_RPC ||
      err.domain === C.VIR_FROM_REMOTE ||
      err.code === C.VIR_ERR_NO_CONNECT ||
      err.code === C.VIR_ERR_INVALID_CONN
    );
  }
  return (err as { code?: unknown } | undefined)?.code === 'ERR_LIBVIRT_CONNECTION_CLOSED';
}

/**
 * True when libvirt refuses the URI itself, before reaching any host: no
 * driver takes its scheme (`tset:///default`), it does not parse, or its
 * driver refuses its path (`qemu:///sytem`). Retrying cannot help: it is a
 * configuration error.
 */
export function isRefusedUri(err: unknown): boolean {
  if (!(err instanceof LibvirtError)) return false;
  if (err.code === C.VIR_ERR_NO_CONNECT && /no connection driver available/.test(err.message)) return true;
  if (err.domain === C.VIR_FROM_URI) return true;
  return err.code === C.VIR_ERR_INTERNAL_ERROR && /\bURI\b/.test(err.message) && !isConnectionError(err);
}

/** The drivers libvirt has (its URI schemes), and the transports of its remote driver. */
const DRIVERS =
  'qemu|test|lxc|xen|libxl|vbox|vmwareplayer|vmwarews|vmwarefusion|esx|gsx|vpx|bhyve|ch|openvz|hyperv|vz|parallels|remote|network|interface|nodedev|nwfilter|secret|storage';
const SCHEME = new RegExp(`^(${DRIVERS})(\\+(unix|ssh|libssh|libssh2|tcp|tls|ext))?$`);

/**
 * Why libvirt cannot take this URI at all, or undefined. Checked before the
 * first connection: without a running libvirtd, libvirt hands a URI of an
 * unknown scheme to its remote driver, and the failure then looks like a
 * daemon that is down.
 */
export function uriProblem(uri: string): string | undefined {
  let scheme: string;
  try {
    scheme = new URL(uri).protocol.replace(/:$/, '');
  } catch {
    return 'it is not a URI (driver[+transport]://[host]/path, e.g. qemu:///system)';
  }
  if (!SCHEME.test(scheme)) return `libvirt has no driver "${scheme}" (e.g. qemu:///system, test:///default)`;
  return undefined;
}

/** An error that may mean a lost connection or not, depending on whether the connection is alive. */
export function isAmbiguousError(err: unknown): boolean {
  return err instanceof LibvirtError && err.code === C.VIR_ERR_SYSTEM_ERROR && !isConnectionError(err);
}

/**
 * A libvirt failure of `what` (a sentence fragment such as "detaching d1
 * from vm1") as a `BackendError`. `refused` is the kind for an operation
 * libvirt or the guest refused (RemovalFailed for detaches).
 */
export function toBackendError(err: unknown, what: string, refused: FailureKind = 'Failed'): BackendError {
  if (err instanceof BackendError) return err;
  const message = err instanceof Error ? err.message : String(err);
  let kind: FailureKind = 'Failed';
  if (isConnectionError(err)) kind = 'BackendUnavailable';
  else if (err instanceof LibvirtError) {
    if (err.code === C.VIR_ERR_DEVICE_MISSING) kind = 'DeviceNotFound';
    else if ([C.VIR_ERR_OPERATION_UNSUPPORTED, C.VIR_ERR_NO_SUPPORT, C.VIR_ERR_CONFIG_UNSUPPORTED].includes(err.code))
      kind = 'NotSupported';
    else if (err.code === C.VIR_ERR_OPERATION_FAILED) kind = refused;
  }
  return new BackendError(kind, `${what}: ${message}`);
}

/**
 * Whether two connections to `uri` see the same domains. They do for every
 * driver with a daemon's state behind it, and for the test driver's shared
 * `test:///default`; not for the test driver on a file of its own
 * (`test:///path/node.xml`, also through libvirtd): each connection loads
 * the file into a world of its own.
 */
export function connectionsShareState(uri: string): boolean {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return false;
  }
  const driver = url.protocol.replace(/:$/, '').split('+')[0];
  return driver !== 'test' || url.pathname === '/default';
}
