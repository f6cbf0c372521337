/**
 * How a plugin's options schema is applied, and where the validators of the
 * shipped plugins' schemas come from: the build generates them (Ajv's
 * standalone code, scripts/precompile-validators.mjs) into
 * `dist/bundle/options-validator.js` of each plugin under `plugins/`, so a
 * start with shipped plugins compiles no schema (about 25 ms each, with
 * Ajv's set-up).
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type * as AjvModule from 'ajv';
import type { Options, ValidateFunction } from 'ajv';

const requireAtRunTime = createRequire(import.meta.url);

/**
 * Ajv itself, for a schema that must be compiled at run time: the config's
 * or a shipped plugin's when the build did not precompile it, and a
 * third-party plugin's. Loaded at that first use, not with the daemon:
 * bundled, its code took about 25 ms of each start.
 */
export function ajvAtRunTime(): typeof AjvModule.Ajv {
  return (requireAtRunTime('ajv') as typeof AjvModule).Ajv;
}

/** Where the build puts a shipped plugin's precompiled options validator. */
export const OPTIONS_VALIDATOR_FILE = join('dist', 'bundle', 'options-validator.js');

/**
 * For the plugins shipped in the package: their schemas are checked against
 * JSON Schema's meta-schema by their tests, not at each start (compiling the
 * meta-schema costs ~45 ms).
 */
export const SHIPPED_OPTIONS_AJV_OPTIONS: Options = { allErrors: false, strict: false, validateSchema: false };

/**
 * A plugin's options schema as vmdevd applies it: an object schema that
 * names its properties but forgets `additionalProperties: false` still
 * refuses options it does not name, so a typo in a config is an error, not
 * an option silently ignored.
 */
export function closedSchema(schema: Record<string, unknown>): Record<string, unknown> {
  const open =
    schema['type'] === 'object' &&
    typeof schema['properties'] === 'object' &&
    schema['additionalProperties'] === undefined &&
    schema['unevaluatedProperties'] === undefined &&
    schema['patternProperties'] === undefined;
  return open ? { ...schema, additionalProperties: false } : schema;
}

/**
 * The validator the build generated for a shipped plugin at `root`, when it
 * was generated from exactly `schema` (the closed one); otherwise undefined,
 * and the schema is compiled as before.
 */
export async function precompiledOptionsValidator(
  root: string,
  schema: Record<string, unknown>,
): Promise<ValidateFunction | undefined> {
  let generated: { SCHEMA?: unknown; validate?: ValidateFunction };
  try {
    generated = (await import(pathToFileURL(join(root, OPTIONS_VALIDATOR_FILE)).href)) as typeof generated;
  } catch {
    return undefined;
  }
  return generated.SCHEMA === JSON.stringify(schema) ? generated.validate : undefined;
}
