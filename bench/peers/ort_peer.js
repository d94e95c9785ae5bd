#!/usr/bin/env node
// ONNX Runtime's side of bench/compare (onnxruntime-node from bench/peers/node_modules,
// installed by `scripts/setup --bench-deps`): intra-op threads as asked, one
// inter-op thread, graph optimisation 'all', the CPU execution provider.
//
//   ort_peer.js serve --model M.onnx [--batch 32] [--threads 2] [--per-round 2] [--warmup 2]
//       the worker protocol of bench/serve.h: a {"ready":...} line, then one
//       {"seconds":[...]} line per "round" on stdin
//   ort_peer.js cold --model M.onnx --input X.bin [--threads 2]
//       cold start: load, one image, print the top class
//   ort_peer.js outputs --model CHECK.onnx --input X.bin --batch N --out DIR
//       writes DIR/dense_3.bin and DIR/out_relu.bin (NHWC) for the numerical check
//
// X.bin files hold (N,224,224,3) float32 NHWC values, as graft reads them; the
// ONNX model (exported from PyTorch) takes NCHW, so they are transposed here.
'use strict';
const fs = require('fs');
const path = require('path');
const readline = require('readline');

const ort = require(path.join(__dirname, 'node_modules', 'onnxruntime-node'));

const SIZE = 224;

function parseArgs(argv) {
  const args = { command: argv[0], batch: 32, threads: 2, perRound: 2, warmup: 2 };
  const names = { '--model': 'model', '--input': 'input', '--out': 'out', '--batch': 'batch',
    '--threads': 'threads', '--per-round': 'perRound', '--warmup': 'warmup' };
  for (let i = 1; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) throw new Error(`ort_peer: bad option '${argv[i]}'`);
    args[key] = ['model', 'input', 'out'].includes(key) ? argv[i + 1] : Number(argv[i + 1]);
  }
  if (!args.model) throw new Error('ort_peer: --model is required');
  return args;
}

function openSession(args) {
  return ort.InferenceSession.create(args.model, {
    intraOpNumThreads: args.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    executionProviders: ['cpu'],
  });
}

function nhwcToNchw(x, n) {
  const y = new Float32Array(x.length);
  const plane = SIZE * SIZE;
  for (let b = 0; b < n; b++)
    for (let p = 0; p < plane; p++)
      for (let c = 0; c < 3; c++) y[(b * 3 + c) * plane + p] = x[(b * plane + p) * 3 + c];
  return y;
}

function nchwToNhwc(x, n, c, plane) {
  const y = new Float32Array(x.length);
  for (let b = 0; b < n; b++)
    for (let k = 0; k < c; k++)
      for (let p = 0; p < plane; p++) y[(b * plane + p) * c + k] = x[(b * c + k) * plane + p];
  return y;
}

function readInput(file, n) {
  const buf = fs.readFileSync(file);
  if (buf.length !== n * SIZE * SIZE * 3 * 4)
    throw new Error(`ort_peer: ${file}: expected ${n}x${SIZE}x${SIZE}x3 float32 values`);
  const x = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
  return new ort.Tensor('float32', nhwcToNchw(x, n), [n, 3, SIZE, SIZE]);
}

async function serve(args) {
  const session = await openSession(args);
  const data = new Float32Array(args.batch * 3 * SIZE * SIZE);
  for (let i = 0; i < data.length; i++) data[i] = ((i * 2654435761) % 2001) / 1000 - 1;
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, [args.batch, 3, SIZE, SIZE]) };
  for (let i = 0; i < args.warmup; i++) await session.run(feeds);
  console.log(JSON.stringify({ ready: true, ort: ort.env.versions.node, threads: args.threads }));
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.startsWith('round')) break;
    const seconds = [];
    for (let r = 0; r < args.perRound; r++) {
      const t0 = process.hrtime.bigint();
      await session.run(feeds);
      seconds.push(Number(process.hrtime.bigint() - t0) * 1e-9);
    }
    console.log(JSON.stringify({ seconds }));
  }
  lines.close();
}

async function cold(args) {
  const session = await openSession(args);
  const input = readInput(args.input, 1);
  const result = await session.run({ [session.inputNames[0]]: input });
  const probs = result[session.outputNames[0]].data;
  let top = 0;
  for (let i = 1; i < probs.length; i++) if (probs[i] > probs[top]) top = i;
  console.log(`top class ${top} prob ${probs[top].toFixed(4)}`);
}

async function outputs(args) {
  const session = await openSession(args);
  const result = await session.run({ [session.inputNames[0]]: readInput(args.input, args.batch) });
  const write = (name, values) => {
    const file = path.join(args.out, `${name}.bin`);
    fs.writeFileSync(`${file}.tmp`, Buffer.from(values.buffer, values.byteOffset, values.byteLength));
    fs.renameSync(`${file}.tmp`, file);
  };
  write('dense_3', result.probs.data);
  const [n, c, h, w] = result.out_relu.dims;
  write('out_relu', nchwToNhwc(result.out_relu.data, n, c, h * w));
  console.log(JSON.stringify({ batch: args.batch, out_relu: [h, w, c] }));
}

const commands = { serve, cold, outputs };
const args = parseArgs(process.argv.slice(2));
if (!commands[args.command]) {
  console.error(`ort_peer: unknown command '${args.command}' (serve, cold or outputs)`);
  process.exit(2);
}
commands[args.command](args).catch((err) => {
  console.error(`ort_peer: ${err.message}`);
  process.exit(1);
});
