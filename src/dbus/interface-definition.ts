/**
 * Reads the interface XML (the contract's single source of truth) and turns
 * it into what dbus-next's `Interface.configureMembers` takes, keeping the
 * original element for `Introspect` (dbus-next's own introspection drops
 * argument names and annotations).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../paths.js';
import { create } from 'xmlbuilder2';
import { ConfigError, errorMessage } from '../core/errors.js';

import { INTERFACE_NAME } from '../protocol.js';

export { INTERFACE_NAME, OBJECT_PATH } from '../protocol.js';
/** The interface file shipped with the package. */
export const INTERFACE_FILE = join(PACKAGE_ROOT, 'dbus', 'org.example.dbustest.xml');

/** The part of the DOM (xmlbuilder2's) this module reads. */
export interface XmlElement {
  readonly nodeType: number;
  readonly tagName: string;
  readonly childNodes: ArrayLike<XmlElement>;
  getAttribute(name: string): string | null;
}

export interface ArgDefinition {
  readonly name: string;
  readonly type: string;
  readonly direction: 'in' | 'out';
}

export interface MethodDefinition {
  readonly name: string;
  readonly args: readonly ArgDefinition[];
  readonly inSignature: string;
  readonly outSignature: string;
}

export interface PropertyDefinition {
  readonly name: string;
  readonly type: string;
  readonly access: 'read' | 'write' | 'readwrite';
}

export interface SignalDefinition {
  readonly name: string;
  readonly args: readonly ArgDefinition[];
  readonly signature: string;
}

export interface InterfaceDefinition {
  readonly name: string;
  readonly methods: ReadonlyMap<string, MethodDefinition>;
  readonly properties: ReadonlyMap<string, PropertyDefinition>;
  readonly signals: ReadonlyMap<string, SignalDefinition>;
  /** The `<interface>` element as a DOM node, to put into `Introspect` answers. */
  readonly element: XmlElement;
}

function children(parent: XmlElement, tag: string): XmlElement[] {
  const out: XmlElement[] = [];
  for (const node of Array.from(parent.childNodes)) {
    if (node.nodeType === 1 && node.tagName === tag) out.push(node);
  }
  return out;
}

function required(el: XmlElement, attr: string, where: string): string {
  const value = el.getAttribute(attr);
  if (value === null || value === '') throw new Error(`${where}: <${el.tagName}> has no ${attr}`);
  return value;
}

function args(el: XmlElement, where: string, defaultDirection: 'in' | 'out'): ArgDefinition[] {
  return children(el, 'arg').map((arg, i) => {
    const name = arg.getAttribute('name');
    if (!name) throw new Error(`${where}: argument ${i} has no name (every argument must be named)`);
    const direction = (arg.getAttribute('direction') ?? defaultDirection) as 'in' | 'out';
    if (direction !== 'in' && direction !== 'out')
      throw new Error(`${where}: argument ${name} has direction ${String(direction)}`);
    return { name, type: required(arg, 'type', `${where} argument ${name}`), direction };
  });
}

/** Parses the interface `name` out of introspection XML text. */
export function parseInterface(xml: string, name = INTERFACE_NAME): InterfaceDefinition {
  const doc = create(xml).node as unknown as { getElementsByTagName(tag: string): ArrayLike<XmlElement> };
  const element = Array.from(doc.getElementsByTagName('interface')).find((el) => el.getAttribute('name') === name);
  if (element === undefined) throw new Error(`no <interface name="${name}">`);
  const methods = new Map<string, MethodDefinition>();
  for (const m of children(element, 'method')) {
    const mName = required(m, 'name', 'method');
    const a = args(m, `method ${mName}`, 'in');
    methods.set(mName, {
      name: mName,
      args: a,
      inSignature: a
        .filter((x) => x.direction === 'in')
        .map((x) => x.type)
        .join(''),
      outSignature: a
        .filter((x) => x.direction === 'out')
        .map((x) => x.type)
        .join(''),
    });
  }
  const properties = new Map<string, PropertyDefinition>();
  for (const p of children(element, 'property')) {
    const pName = required(p, 'name', 'property');
    const access = required(p, 'access', `property ${pName}`);
    if (access !== 'read' && access !== 'write' && access !== 'readwrite')
      throw new Error(`property ${pName}: access ${access}`);
    properties.set(pName, { name: pName, type: required(p, 'type', `property ${pName}`), access });
  }
  const signals = new Map<string, SignalDefinition>();
  for (const s of children(element, 'signal')) {
    const sName = required(s, 'name', 'signal');
    const a = args(s, `signal ${sName}`, 'out');
    signals.set(sName, { name: sName, args: a, signature: a.map((x) => x.type).join('') });
  }
  return { name, methods, properties, signals, element };
}

/** Loads and parses the interface file; a broken file is a start-up error. */
export function loadInterface(path = INTERFACE_FILE): InterfaceDefinition {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read the interface file ${path}: ${errorMessage(err)}`);
  }
  try {
    return parseInterface(text);
  } catch (err) {
    throw new ConfigError(`the interface file ${path} is invalid: ${errorMessage(err)}`);
  }
}
