#!/usr/bin/env node
// Reference outputs from TF.js (@tensorflow/tfjs, pure-JS 'cpu' backend) for
// graft's golden tests.
//
//   node tests/node/tfjs_reference.js --model models/mobilenet_v2 --out DIR
//        [--layers block_10_project_BN,out_relu] [--batch N] [--seed S]
//        [--input FILE.bin --input-shape N,H,W,C] [--top1] [--skip-if-missing]
//
// --model   a TF.js layers-model folder (holding model.json) or the model.json
// --out     folder to write into (created): input.bin, <layer>.bin for each of
//           --layers, output.bin (the model's final output) and manifest.json.
//           All .bin files are raw little-endian float32, row-major, batch first.
// --input   raw little-endian float32 input of shape --input-shape; without it
//           the input is (batch,H,W,C) pseudo-random values (see below), with H,W,C
//           taken from the model's input layer.
// --top1    print one JSON line per sample, {"top1": index, "prob": p}, from the
//           final output; --out is then optional.
// --skip-if-missing  exit 77 (ctest's skip code) when @tensorflow/tfjs or the
//           model is not installed, instead of failing.
//
// Pseudo-random input: mulberry32 seeded with --seed (default 1). Element i of
// the NHWC input, in row-major order, is  f32(u_i / 2^32 * 2 - 1)  where u_i is
// the i-th uint32 the generator returns, so it lies in [-1, 1). mulberry32:
//   state += 0x6D2B79F5; t = state;
//   t = imul(t ^ (t >>> 15), t | 1); t ^= t + imul(t ^ (t >>> 7), t | 61);
//   u = (t ^ (t >>> 14)) >>> 0
//
// manifest.json: {"model", "batch", "seed" (null with --input), "tfjs", "backend",
//   "input": {"file", "shape"}, "outputs": [{"name", "file", "shape", "max_abs"}],
//   the last output named "__output__" (file output.bin)}.
// Prints max|value| per output to stdout and timings to stderr. Exit 1 on error.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

const SKIP = 77;
let skipIfMissing = false;

function die(msg, code = 1) {
  process.stderr.write(`tfjs_reference: ${msg}\n`);
  process.exit(code);
}

function usage() {
  die('usage: tfjs_reference.js --model DIR --out DIR [--layers A,B] [--batch N] [--seed S] ' +
      '[--input FILE.bin --input-shape N,H,W,C] [--top1] [--skip-if-missing]');
}

function parseArgs(argv) {
  const o = { layers: [], batch: null, seed: 1, top1: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    const int = (s, what, min) => {
      if (!/^-?\d+$/.test(s) || Number(s) < min) die(`${what} must be an integer >= ${min}, got '${s}'`);
      return Number(s);
    };
    switch (a) {
      case '--model': o.model = val(); break;
      case '--out': o.out = val(); break;
      case '--layers': o.layers = val().split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--batch': o.batch = int(val(), '--batch', 1); break;
      case '--seed': o.seed = int(val(), '--seed', 0); break;
      case '--input': o.input = val(); break;
      case '--input-shape': o.inputShape = val().split(',').map((s) => int(s.trim(), '--input-shape', 1)); break;
      case '--top1': o.top1 = true; break;
      case '--skip-if-missing': o.skipIfMissing = true; break;
      case '-h': case '--help': usage(); break;
      default: die(`unknown argument '${a}'`);
    }
  }
  if (!o.model) usage();
  if (!o.out && !o.top1) die('--out is required (unless --top1)');
  if (!!o.input !== !!o.inputShape) die('--input and --input-shape go together');
  if (o.inputShape) {
    if (o.batch !== null && o.batch !== o.inputShape[0]) {
      die(`--batch ${o.batch} disagrees with --input-shape ${o.inputShape.join(',')}`);
    }
    o.batch = o.inputShape[0];
  }
  if (o.batch === null) o.batch = 1;
  return o;
}

function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

function randomInput(n, seed) {
  const next = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (next() / 4294967296) * 2 - 1;
  return x;
}

const LE = os.endianness() === 'LE';

function readF32(file, count) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    die(`cannot read ${file}: ${e.code || e.message}`);
  }
  if (buf.length !== count * 4) die(`${file} holds ${buf.length} bytes, the shape needs ${count * 4}`);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}

function writeF32(file, data) {
  let buf;
  if (LE) {
    buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  } else {
    buf = Buffer.alloc(data.length * 4);
    for (let i = 0; i < data.length; i++) buf.writeFloatLE(data[i], i * 4);
  }
  fs.writeFileSync(file, buf);
}

function maxAbs(data) {
  let m = 0;
  for (let i = 0; i < data.length; i++) {
    const a = Math.abs(data[i]);
    if (a > m || Number.isNaN(a)) m = a;
  }
  return m;
}

function safeName(layer) {
  return layer.replace(/[^A-Za-z0-9_.-]/g, '_');
}

// Reads model.json and its shards into the ModelArtifacts an IOHandler returns.
function readArtifacts(modelPath) {
  let jsonPath = modelPath;
  if (fs.existsSync(modelPath) && fs.statSync(modelPath).isDirectory()) {
    jsonPath = path.join(modelPath, 'model.json');
  }
  if (!fs.existsSync(jsonPath)) {
    if (skipIfMissing) die(`${jsonPath} missing (run scripts/fetch-models); skipping`, SKIP);
    die(`${jsonPath} does not exist (run scripts/fetch-models)`);
  }
  let json;
  try {
    json = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
  } catch (e) {
    die(`${jsonPath}: ${e.message}`);
  }
  if (!json.modelTopology || !Array.isArray(json.weightsManifest)) {
    die(`${jsonPath}: not a TF.js layers model (no modelTopology / weightsManifest)`);
  }
  const dir = path.dirname(jsonPath);
  const weightSpecs = [];
  const buffers = [];
  for (const group of json.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) {
      const f = path.join(dir, p);
      try {
        buffers.push(fs.readFileSync(f));
      } catch (e) {
        die(`cannot read weight shard ${f}: ${e.code || e.message}`);
      }
    }
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {
    modelTopology: json.modelTopology,
    weightSpecs,
    weightData,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  skipIfMissing = !!opts.skipIfMissing;

  let tf;
  try {
    tf = require('@tensorflow/tfjs');
  } catch (e) {
    const msg = '@tensorflow/tfjs is not installed (run scripts/setup --test-deps)';
    if (skipIfMissing) die(`${msg}; skipping`, SKIP);
    die(msg);
  }
  tf.env().set('PROD', true); // silences the "install tfjs-node" banner
  await tf.setBackend('cpu');
  await tf.ready();

  const t0 = Date.now();
  const artifacts = readArtifacts(opts.model);
  const model = await tf.loadLayersModel({ load: async () => artifacts });
  const t1 = Date.now();

  const inShape = model.inputs[0].shape; // [null, H, W, C]
  const sample = inShape.slice(1);
  if (sample.some((d) => d == null)) die(`model input shape ${JSON.stringify(inShape)} is not fixed`);
  const shape = [opts.batch, ...sample];
  const count = shape.reduce((a, b) => a * b, 1);
  let inputData;
  if (opts.input) {
    const want = opts.inputShape.slice(1).join(',');
    if (want !== sample.join(',')) die(`--input-shape ${opts.inputShape.join(',')} does not fit the model input ${JSON.stringify(inShape)}`);
    inputData = readF32(opts.input, count);
  } else {
    inputData = randomInput(count, opts.seed);
  }

  const layerOutputs = opts.layers.map((name) => {
    let layer;
    try {
      layer = model.getLayer(name);
    } catch (e) {
      const near = model.layers.map((l) => l.name).filter((n) => n.includes(name.replace(/_\d+$/, ''))).slice(0, 8);
      die(`no layer named '${name}'${near.length ? ` (similar: ${near.join(', ')})` : ''}`);
    }
    return layer.output;
  });
  const finalOutput = model.outputs[0];
  const probe = layerOutputs.length ? tf.model({ inputs: model.inputs, outputs: [...layerOutputs, finalOutput] }) : model;

  const x = tf.tensor(inputData, shape, 'float32');
  const t2 = Date.now();
  let ys = probe.predict(x, { batchSize: opts.batch });
  if (!Array.isArray(ys)) ys = [ys];
  const datas = ys.map((y) => y.dataSync());
  const t3 = Date.now();

  const names = [...opts.layers, '__output__'];
  const results = names.map((name, i) => ({
    name,
    file: name === '__output__' ? 'output.bin' : `${safeName(name)}.bin`,
    shape: ys[i].shape,
    data: datas[i],
    max_abs: maxAbs(datas[i]),
  }));

  if (opts.out) {
    fs.mkdirSync(opts.out, { recursive: true });
    writeF32(path.join(opts.out, 'input.bin'), inputData);
    for (const r of results) writeF32(path.join(opts.out, r.file), r.data);
    const manifest = {
      model: opts.model,
      batch: opts.batch,
      seed: opts.input ? null : opts.seed,
      tfjs: tf.version.tfjs,
      backend: tf.getBackend(),
      input: { file: 'input.bin', shape },
      outputs: results.map((r) => ({ name: r.name, file: r.file, shape: r.shape, max_abs: r.max_abs })),
    };
    fs.writeFileSync(path.join(opts.out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  }

  if (opts.top1) {
    const out = results[results.length - 1];
    const per = out.data.length / opts.batch;
    for (let b = 0; b < opts.batch; b++) {
      let best = 0;
      for (let k = 1; k < per; k++) if (out.data[b * per + k] > out.data[b * per + best]) best = k;
      process.stdout.write(JSON.stringify({ top1: best, prob: out.data[b * per + best] }) + '\n');
    }
  } else {
    for (const r of results) {
      process.stdout.write(`${r.name} shape=${JSON.stringify(r.shape)} max_abs=${r.max_abs}\n`);
    }
  }
  process.stderr.write(`tfjs_reference: load ${t1 - t0} ms, predict (batch ${opts.batch}) ${t3 - t2} ms\n`);
}

process.on('unhandledRejection', (e) => die(e && e.message ? e.message : String(e)));
main().catch((e) => die(e && e.message ? e.message : String(e)));
