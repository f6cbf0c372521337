/**
 * A small element tree of an XML document, built with sax. libvirt's domain
 * XML is read only to find devices and attributes; a full DOM would cost
 * several times the time and memory, and loading one more XML library.
 */
import sax from 'sax';

export interface XmlElement {
  readonly name: string;
  readonly attributes: Readonly<Record<string, string>>;
  readonly children: XmlElement[];
}

/** Parses `xml`; throws on malformed XML. Namespace prefixes are dropped from element names. */
export function parseXml(xml: string): XmlElement {
  const parser = sax.parser(true, { trim: true });
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  parser.onopentag = (tag) => {
    const name = tag.name.includes(':') ? tag.name.slice(tag.name.indexOf(':') + 1) : tag.name;
    const element: XmlElement = { name, attributes: tag.attributes as Record<string, string>, children: [] };
    const parent = stack.at(-1);
    if (parent) parent.children.push(element);
    else root ??= element;
    stack.push(element);
  };
  parser.onclosetag = () => {
    stack.pop();
  };
  parser.onerror = (err) => {
    throw err;
  };
  parser.write(xml).close();
  if (root === undefined) throw new Error('no root element');
  return root;
}

export function child(el: XmlElement | undefined, name: string): XmlElement | undefined {
  return el?.children.find((c) => c.name === name);
}

export function attr(el: XmlElement | undefined, name: string): string | undefined {
  return el?.attributes[name];
}
