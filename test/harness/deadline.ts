/**
 * A guard against a hang, for a wait on something that has no timeout of
 * its own: rejects naming `what` if `promise` has not settled after `ms`.
 * Give it generously: it must never be what decides a test on a busy machine.
 */
export async function deadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}
