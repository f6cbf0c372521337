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
