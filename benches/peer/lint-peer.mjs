// The peer of `rollwright lint` in benches/lint_corpus.rs: schema-only
// validation of every spec file under DIR with js-yaml and Ajv (JSON Schema
// 2020-12, one thread), against rollwright's published schemas.
// Usage: node lint-peer.mjs SCHEMA_DIR DIR  ->  {"files": N, "invalid": K}
import fs from "node:fs";
import path from "node:path";
import yaml from "js-yaml";
import Ajv2020 from "ajv/dist/2020.js";

const [schemaDir, dir] = process.argv.slice(2);
const ajv = new Ajv2020({ allErrors: true, strict: false });
const load = (rel) => JSON.parse(fs.readFileSync(path.join(schemaDir, rel), "utf8"));
ajv.addSchema(load("common.schema.json"), "common.schema.json");
for (const f of fs.readdirSync(path.join(schemaDir, "steps"))) {
  ajv.addSchema(load(`steps/${f}`), `steps/${f}`);
}
const validate = ajv.compile(load("rollout.schema.json"));

function* walk(d) {
  for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) yield* walk(p);
    else if (e.name.endsWith(".yaml")) yield p;
  }
}

let files = 0;
let invalid = 0;
for (const f of walk(dir)) {
  files += 1;
  let doc;
  try {
    doc = yaml.load(fs.readFileSync(f, "utf8"));
  } catch {
    invalid += 1;
    continue;
  }
  if (!validate(doc)) invalid += 1;
}
console.log(JSON.stringify({ files, invalid }));
