#!/usr/bin/env node
// Turns a TF.js layers model that an npm package ships as UMD-wrapped scripts
// (model.min.js evaluating to {modelTopology, weightsManifest}; one
// <shard>.min.js per weight shard evaluating to a base64 string) back into the
// standard TF.js layers-model format: model.json plus binary .bin shards.
//
//   node scripts/unwrap-tfjs-umd.js --src DIR --out DIR [--generated-by TEXT]
//                                   [--labels-js FILE] [--labels-var NAME]
//
// --src        folder holding model.min.js and the shard .min.js files
// --out        folder to write model.json, the shards and labels.txt into (created;
//              must not exist yet, so that a caller can rename it into place whole)
// --labels-js  a JS file of the package defining `NAME = { 0: 'a', 1: 'b', ... }`;
//              written as labels.txt, one label a line, after checking that the
//              indices run 0..n-1 and n equals the model's final Dense units
//
// No npm dependencies. The wrapped scripts are evaluated in a fresh V8 context
// that holds only `module` and `exports` (no require, no process): this is not a
// security boundary, so only run it on files whose integrity the caller checked.
'use strict';

const fs = require('fs');
const path = require('path');
const vm = require('vm');

function die(msg) {
  process.stderr.write(`unwrap-tfjs-umd: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { labelsVar: 'NSFW_CLASSES', generatedBy: 'graft unwrap-tfjs-umd.js' };
  const names = {
    '--src': 'src', '--out': 'out', '--generated-by': 'generatedBy',
    '--labels-js': 'labelsJs', '--labels-var': 'labelsVar',
  };
  for (let i = 0; i < argv.length; i++) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) die(`bad argument '${argv[i]}' (see the header of this script)`);
    opts[key] = argv[++i];
  }
  if (!opts.src || !opts.out) die('--src and --out are required');
  return opts;
}

// Evaluates one UMD bundle and returns what it assigns to module.exports.
function evalUmd(file) {
  let code;
  try {
    code = fs.readFileSync(file, 'utf8');
  } catch (e) {
    die(`cannot read ${file}: ${e.code || e.message}`);
  }
  const mod = { exports: {} };
  const sandbox = Object.create(null);
  sandbox.module = mod;
  sandbox.exports = mod.exports;
  try {
    vm.runInNewContext(code, sandbox, { filename: file, timeout: 60000 });
  } catch (e) {
    die(`${file}: evaluating the UMD wrapper failed: ${e.message}`);
  }
  return mod.exports;
}

// Bytes one stored value takes, honouring quantisation.
const BYTES = { float32: 4, int32: 4, bool: 1, uint8: 1, uint16: 2, float16: 2 };
function specBytes(w) {
  if (!Array.isArray(w.shape) || !w.shape.every((d) => Number.isInteger(d) && d >= 0)) {
    die(`weight ${w.name}: bad shape ${JSON.stringify(w.shape)}`);
  }
  const dtype = w.quantization ? w.quantization.dtype : w.dtype;
  const size = BYTES[dtype];
  if (!size) die(`weight ${w.name}: unsupported dtype ${dtype}`);
  return w.shape.reduce((a, b) => a * b, 1) * size;
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function shardFile(src, p) {
  // A manifest path names the shard without its wrapper suffix ("group1-shard1of1").
  const base = path.basename(p).replace(/\.min\.js$/, '').replace(/\.bin$/, '');
  if (!/^[A-Za-z0-9_.-]+$/.test(base)) die(`unsafe shard name ${JSON.stringify(p)}`);
  return { base, file: path.join(src, `${base}.min.js`) };
}

function readLabels(file, varName) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    die(`cannot read ${file}: ${e.code || e.message}`);
  }
  const at = text.indexOf(`${varName} = {`);
  if (at < 0) die(`${file}: no '${varName} = {' found`);
  const body = text.slice(at, text.indexOf('}', at));
  const labels = [];
  const re = /(\d+)\s*:\s*(['"])([^'"\n]*)\2/g;
  let m;
  while ((m = re.exec(body)) !== null) {
    const idx = Number(m[1]);
    if (idx !== labels.length) die(`${file}: ${varName} index ${idx} out of order`);
    labels.push(m[3]);
  }
  if (labels.length === 0) die(`${file}: ${varName} holds no labels`);
  return labels;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (fs.existsSync(opts.out)) die(`${opts.out} exists already`);

  const model = evalUmd(path.join(opts.src, 'model.min.js'));
  const topology = model && model.modelTopology;
  const manifest = model && model.weightsManifest;
  if (!topology || typeof topology !== 'object') die('model.min.js: no modelTopology object');
  if (!Array.isArray(manifest) || manifest.length === 0) die('model.min.js: no weightsManifest array');
  const config = topology.model_config ? topology.model_config.config : topology.config;
  if (!config || !Array.isArray(config.layers)) die('model.min.js: modelTopology has no layers');

  const shards = []; // {name, data}
  const newManifest = [];
  let values = 0;
  for (const [g, group] of manifest.entries()) {
    if (!Array.isArray(group.paths) || !Array.isArray(group.weights)) die(`weight group ${g} malformed`);
    let want = 0;
    for (const w of group.weights) {
      want += specBytes(w);
      values += w.shape.reduce((a, b) => a * b, 1);
    }
    const paths = [];
    let got = 0;
    for (const p of group.paths) {
      const { base, file } = shardFile(opts.src, p);
      const b64 = evalUmd(file);
      if (typeof b64 !== 'string') die(`${file}: evaluates to ${typeof b64}, not a base64 string`);
      if (b64.length % 4 !== 0 || !B64.test(b64)) die(`${file}: not valid base64`);
      const data = Buffer.from(b64, 'base64');
      shards.push({ name: `${base}.bin`, data });
      paths.push(`${base}.bin`);
      got += data.length;
    }
    if (got !== want) {
      die(`weight group ${g}: shards hold ${got} bytes, the weight specs need ${want}`);
    }
    newManifest.push({ paths, weights: group.weights });
  }

  let labels = null;
  if (opts.labelsJs) {
    labels = readLabels(opts.labelsJs, opts.labelsVar);
    const last = config.layers[config.layers.length - 1];
    const units = last && last.config && last.config.units;
    if (units !== undefined && units !== labels.length) {
      die(`${labels.length} labels, but the final layer ${last.name} has ${units} units`);
    }
  }

  const json = {
    format: 'layers-model',
    generatedBy: opts.generatedBy,
    convertedBy: null,
    modelTopology: topology,
    weightsManifest: newManifest,
  };

  fs.mkdirSync(opts.out, { recursive: false });
  fs.writeFileSync(path.join(opts.out, 'model.json'), JSON.stringify(json));
  for (const s of shards) fs.writeFileSync(path.join(opts.out, s.name), s.data);
  if (labels) fs.writeFileSync(path.join(opts.out, 'labels.txt'), labels.join('\n') + '\n');

  const input = config.layers[0] && config.layers[0].config && config.layers[0].config.batch_input_shape;
  const bytes = shards.reduce((a, s) => a + s.data.length, 0);
  process.stdout.write(`${path.basename(opts.out)}: ${config.layers.length} layers, input ` +
    `${JSON.stringify(input)}, ${values} weight values in ${shards.length} shard(s), ${bytes} bytes` +
    `${labels ? `, labels ${labels.join(',')}` : ''}\n`);
}

main();
