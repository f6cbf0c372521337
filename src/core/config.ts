/**
 * The daemon's configuration: a JSON file validated with a JSON Schema.
 * An invalid file stops the daemon at start with the path of the bad field
 * (`backends[0].uri: must be string`).
 */
import { DEFAULT_BUS_NAME } from '../protocol.js';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { ErrorObject, Options, ValidateFunction } from 'ajv';
import { ConfigError, errorMessage } from './errors.js';
import { LOG_LEVELS, type LogLevel } from './logger.js';
import { ajvAtRunTime } from './options-schema.js';
import { PRECOMPILED_VALIDATORS } from './precompiled-validators.js';

export const Config = Symbol('Config');

export interface BackendConfig {
  readonly id: string;
  readonly plugin: string;
  /** Everything else in the entry: the plugin's own options. */
  readonly options: Readonly<Record<string, unknown>>;
}

export interface AccessConfig {
  /** User names or numeric uids allowed to call TestMethod and write properties. */
  readonly users: readonly string[];
  /** Group names or numeric gids whose members are allowed too. */
  readonly groups: readonly string[];
}

export interface Config {
  /** `session`, `system`, or a D-Bus address such as `unix:path=/run/bus`. */
  readonly bus: string;
  readonly busName: string;
  readonly detachTimeoutSeconds: number;
  readonly logLevel: LogLevel;
  readonly backends: readonly BackendConfig[];
  readonly access: AccessConfig;
  /** Directory that relative plugin paths are resolved against (the config file's). */
  readonly baseDir: string;
  /** Where it came from, for messages: the file, or `default config`. */
  readonly source: string;
}

export { DEFAULT_BUS_NAME } from '../protocol.js';
export const DEFAULT_ADMIN_GROUP = 'vmdevd-admin';

const BUS_NAME = '^[A-Za-z_-][A-Za-z0-9_-]*(\\.[A-Za-z_-][A-Za-z0-9_-]*)+$';

export const CONFIG_SCHEMA = {
  $id: 'urn:vmdevd:config:1',
  type: 'object',
  additionalProperties: false,
  properties: {
    $schema: { type: 'string' },
    bus: {
      type: 'string',
      minLength: 1,
      description: 'session, system, or a D-Bus address',
    },
    busName: { type: 'string', maxLength: 255, pattern: BUS_NAME },
    detachTimeoutSeconds: { type: 'number', exclusiveMinimum: 0, maximum: 3600 },
    logLevel: { enum: [...LOG_LEVELS] },
    backends: {
      type: 'array',
      minItems: 1,
      maxItems: 64,
      items: {
        type: 'object',
        required: ['id', 'plugin'],
        properties: {
          id: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' },
          plugin: { type: 'string', minLength: 1, maxLength: 4096 },
        },
      },
    },
    access: {
      type: 'object',
      additionalProperties: false,
      properties: {
        users: { type: 'array', items: { type: 'string', minLength: 1 } },
        groups: { type: 'array', items: { type: 'string', minLength: 1 } },
      },
    },
  },
} as const;

/**
 * How CONFIG_SCHEMA is compiled, at build time (precompiled-validators.ts) or,
 * failing that, at the first parse. Not checked against JSON Schema's
 * meta-schema at each start (compiling it costs ~20 ms of the daemon's
 * start): test/unit/config.test.ts checks it.
 */
export const CONFIG_AJV_OPTIONS: Options = {
  allErrors: false,
  strict: true,
  allowUnionTypes: true,
  validateSchema: false,
};

let configValidator: ValidateFunction | undefined;

function validateConfig(data: unknown): ErrorObject | undefined {
  configValidator ??=
    PRECOMPILED_VALIDATORS.get(JSON.stringify(CONFIG_SCHEMA)) ??
    new (ajvAtRunTime())(CONFIG_AJV_OPTIONS).compile(CONFIG_SCHEMA);
  return configValidator(data) ? undefined : configValidator.errors![0]!;
}

/** `/backends/0/uri` → `backends[0].uri` */
export function fieldPath(pointer: string, base = ''): string {
  let path = base;
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    path += /^[0-9]+$/.test(part) ? `[${part}]` : path === '' ? part : `.${part}`;
  }
  return path;
}

/** One readable line for the first schema error. */
export function describeSchemaError(error: ErrorObject, base = ''): string {
  let path = fieldPath(error.instancePath, base);
  let message = error.message ?? 'is invalid';
  const params = error.params as Record<string, unknown>;
  if (error.keyword === 'additionalProperties') {
    path = fieldPath(`${error.instancePath}/${String(params['additionalProperty'])}`, base);
    message = 'is not a known field';
  } else if (error.keyword === 'required') {
    path = fieldPath(`${error.instancePath}/${String(params['missingProperty'])}`, base);
    message = 'is required';
  } else if (error.keyword === 'enum') {
    message = `must be one of ${(params['allowedValues'] as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  }
  return `${path || '(top level)'}: ${message}`;
}

export interface ConfigOverrides {
  readonly bus?: string | undefined;
}

/** The config used when no file is given: the session bus and libvirt's test driver. */
export function defaultConfigData(): Record<string, unknown> {
  return { backends: [{ id: 'default', plugin: 'libvirt', uri: 'test:///default' }] };
}

/** Validates parsed JSON and fills in defaults. `source` names the file in errors. */
export function parseConfig(data: unknown, source: string, baseDir: string, overrides: ConfigOverrides = {}): Config {
  const error = validateConfig(data);
  if (error !== undefined) throw new ConfigError(`${source}: ${describeSchemaError(error)}`);
  const raw = data as Record<string, unknown>;
  const backends = (raw['backends'] as Record<string, unknown>[] | undefined) ?? [];
  const ids = new Set<string>();
  const parsedBackends = backends.map((entry, i): BackendConfig => {
    const { id, plugin, ...options } = entry as { id: string; plugin: string };
    if (ids.has(id)) throw new ConfigError(`${source}: backends[${i}].id: "${id}" is used by another backend`);
    ids.add(id);
    return { id, plugin, options };
  });
  const access = (raw['access'] as Partial<AccessConfig> | undefined) ?? {};
  return {
    bus: overrides.bus ?? (raw['bus'] as string | undefined) ?? 'session',
    busName: (raw['busName'] as string | undefined) ?? DEFAULT_BUS_NAME,
    detachTimeoutSeconds: (raw['detachTimeoutSeconds'] as number | undefined) ?? 30,
    logLevel: (raw['logLevel'] as LogLevel | undefined) ?? 'info',
    backends: parsedBackends.length > 0 ? parsedBackends : parseConfig(defaultConfigData(), source, baseDir).backends,
    access: { users: access.users ?? ['root'], groups: access.groups ?? [DEFAULT_ADMIN_GROUP] },
    baseDir,
    source,
  };
}

/** Reads and validates a config file; without a path, the defaults. */
export function loadConfig(path: string | undefined, overrides: ConfigOverrides = {}): Config {
  if (path === undefined) {
    return parseConfig(defaultConfigData(), 'default config', process.cwd(), overrides);
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${errorMessage(err)}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${path}: not valid JSON: ${errorMessage(err)}`);
  }
  return parseConfig(data, path, dirname(resolve(path)), overrides);
}
