/** libvirt's errors as the plugin API's failure kinds. */
import { BackendError, type FailureKind } from 'vmdevd/plugin-api';
import { constants as C, LibvirtError } from './binding.js';

/** True for errors that mean the connection to libvirt is gone. */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof LibvirtError) {
    return (
      [C.VIR_ERR_SYSTEM_ERROR, C.VIR_ERR_RPC, C.VIR_ERR_NO_CONNECT, C.VIR_ERR_INVALID_CONN].includes(err.code) ||
      err.domain === C.VIR_FROM_RPC
    );
  }
  return (err as { code?: unknown } | undefined)?.code === 'ERR_LIBVIRT_CONNECTION_CLOSED';
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
