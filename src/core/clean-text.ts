/**
 * Text from a backend on its way to the bus. A D-Bus string is valid UTF-8
 * without NUL; a backend's message may hold anything its hypervisor said.
 */

/** The longest message vmdevd passes on; more is cut with an ellipsis. */
export const MAX_MESSAGE_LENGTH = 4096;

// C0 controls but tab and newline, DEL, C1 controls, and lone surrogates
// (which would not survive UTF-8). Control characters are what it is for.
const UNSAFE =
  // eslint-disable-next-line no-control-regex
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** `text` with every control character (but tab and newline) and lone surrogate replaced by U+FFFD, and bounded. */
export function cleanText(text: unknown, max = MAX_MESSAGE_LENGTH): string {
  let s = typeof text === 'string' ? text : String(text);
  if (s.length > max) s = `${s.slice(0, max - 1)}…`;
  return s.replace(UNSAFE, '\ufffd');
}

/** True for a name that may be a key or a value on the bus as it is: no control character, no lone surrogate. */
export function isCleanName(text: string): boolean {
  UNSAFE.lastIndex = 0;
  return !UNSAFE.test(text);
}
