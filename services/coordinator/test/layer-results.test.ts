import assert from 'node:assert/strict';
import { layerResults } from '@ferry/coordinator';
import type { LayerOutcome } from '@ferry/runtime';

const D = 'sha256:' + 'a'.repeat(64);
const base = {
  imageIndex: 0,
  layerIndex: 0,
  mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
};

describe('coordinator: layerResults per target of a fan-out', () => {
  const lookup: LayerOutcome = {
    ...base,
    state: 'exists',
    digest: D,
    size: 10,
    targets: {
      'a/x:1': { state: 'exists', digest: D, size: 10 },
      'b/x:1': { state: 'upload', digest: D, size: 10 },
    },
  };

  it('each target sees its own state: the upload job result for the target it served, the lookup for the other', () => {
    const upload: LayerOutcome = {
      ...base,
      state: 'uploaded',
      digest: D,
      size: 10,
      targets: { 'b/x:1': { state: 'uploaded', digest: D, size: 10 } },
    };
    for (const order of [
      { l: lookup, u: upload },
      { u: upload, l: lookup },
    ]) {
      const values = Object.fromEntries(Object.entries(order)) as Record<string, LayerOutcome>;
      assert.equal(layerResults(values, 'a/x:1').get('0/0')?.state, 'exists');
      assert.equal(layerResults(values, 'b/x:1').get('0/0')?.state, 'uploaded');
    }
  });

  it('a target that failed alone is failed for that target only', () => {
    const upload: LayerOutcome = {
      ...base,
      state: 'failed',
      targets: { 'b/x:1': { state: 'failed', error: { code: 'FERRY_X', message: 'no' } } },
    };
    const values = { l: lookup, u: upload };
    assert.equal(layerResults(values, 'a/x:1').get('0/0')?.state, 'exists');
    assert.equal(layerResults(values, 'b/x:1').get('0/0')?.state, 'failed');
  });

  it('a single-target push reads results without a targets map, and skips the resolve job', () => {
    const values = {
      r: { ...base, layerIndex: -1, state: 'resolved', mediaType: '' } as LayerOutcome,
      l: { ...base, state: 'upload', digest: D } as LayerOutcome,
      u: { ...base, state: 'uploaded', digest: D, size: 10 } as LayerOutcome,
    };
    const r = layerResults(values);
    assert.equal(r.size, 1);
    assert.equal(r.get('0/0')?.state, 'uploaded');
  });

  it("a lookup job of a whole image answers for each of its layers; an upload's result still wins", () => {
    const E = 'sha256:' + 'e'.repeat(64);
    const layer1 = { ...base, layerIndex: 1, state: 'upload', digest: E } as LayerOutcome;
    const layer0 = { ...base, state: 'exists', digest: D, size: 10 } as LayerOutcome;
    const image: LayerOutcome = { ...layer0, layers: [layer0, layer1] };
    const upload = {
      ...base,
      layerIndex: 1,
      state: 'uploaded',
      digest: E,
      size: 7,
    } as LayerOutcome;
    for (const values of [
      { l: image, u: upload },
      { u: upload, l: image },
    ]) {
      const r = layerResults(values);
      assert.deepEqual([...r.entries()].map(([k, v]) => [k, v.state, v.size]).sort(), [
        ['0/0', 'exists', 10],
        ['0/1', 'uploaded', 7],
      ]);
    }
  });

  it("a whole image's lookup says per target where the config is (`<image>/config`)", () => {
    const C = 'sha256:' + 'c'.repeat(64);
    const image: LayerOutcome = {
      ...base,
      state: 'exists',
      digest: D,
      size: 10,
      layers: [{ ...base, state: 'exists', digest: D, size: 10 }],
      config: { digest: C, targets: { 'a/x:1': 'exists', 'b/x:1': 'missing' } },
    };
    const a = layerResults({ l: image }, 'a/x:1').get('0/config');
    assert.deepEqual([a?.state, a?.digest, a?.layerIndex], ['exists', C, -1]);
    assert.equal(layerResults({ l: image }, 'b/x:1').get('0/config')?.state, 'upload');
    // A target the lookup could not check has no entry: the coordinator looks itself.
    assert.equal(layerResults({ l: image }, 'c/x:1').get('0/config'), undefined);
    // One target: its entry.
    const one = { ...image, config: { digest: C, targets: { 'a/x:1': 'mounted' as const } } };
    assert.equal(layerResults({ l: one }).get('0/config')?.state, 'mounted');
    assert.equal(layerResults({ l: one }).get('0/0')?.state, 'exists');
  });
});
