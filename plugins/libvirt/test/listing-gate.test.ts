/**
 * The gate that holds the backends' type reads while another backend of
 * the daemon is still listing its domains: it opens when the last listing
 * ends, and never holds longer than its bound.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ListingGate } from '../src/listing-gate.js';

/** Whether a promise has settled, after the loop turned once. */
async function settled(promise: Promise<void>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await new Promise<void>((resolve) => setImmediate(resolve));
  return done;
}

describe('ListingGate', () => {
  it('is open when nobody lists', async () => {
    assert.equal(await settled(new ListingGate(1e9).idle()), true);
  });

  it('opens when the last listing ends, not before', async () => {
    const gate = new ListingGate(1e9);
    const first = gate.begin();
    const second = gate.begin();
    const idle = gate.idle();
    first();
    first(); // a second end of the same listing counts for nothing
    assert.equal(await settled(idle), false, 'one listing is still under way');
    second();
    assert.equal(await settled(idle), true);
  });

  // Fails by its timeout if idle() waits for the listing.
  it('holds nobody longer than its bound when a listing never ends', { timeout: 30_000 }, async () => {
    const gate = new ListingGate(1);
    gate.begin();
    await gate.idle();
  });
});
