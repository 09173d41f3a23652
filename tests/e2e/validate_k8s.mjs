// Validates Kubernetes manifests (multi-document YAML) against the published CRD schemas that
// @kubernetes-models/* packages carry. Usage: node validate_k8s.mjs NODE_DIR FILE...
// Prints one JSON line per document: {file, kind, name, schema: "validated"|"none", error?}.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [nodeDir, ...files] = process.argv.slice(2);
const mod = (rel) => import(pathToFileURL(path.join(nodeDir, "node_modules", rel)).href);
const yaml = (await mod("js-yaml/index.js")).default;
const PACKAGES = { "istio.io": "@kubernetes-models/istio" };

for (const file of files) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (doc === null || doc === undefined) continue;
    const [group, version] = doc.apiVersion.split("/");
    const out = { file, kind: doc.kind, name: doc.metadata?.name, schema: "none" };
    const pkg = Object.entries(PACKAGES).find(([suffix]) => group.endsWith(suffix))?.[1];
    if (pkg) {
      const modelPath = path.join(pkg, group, version, `${doc.kind}.js`);
      try {
        const Model = (await mod(modelPath))[doc.kind];
        new Model(doc).validate();
        out.schema = "validated";
      } catch (e) {
        out.schema = "validated";
        out.error = String(e && e.message ? e.message : e);
        if (e && e.errors) out.error += " " + JSON.stringify(e.errors);
      }
    }
    console.log(JSON.stringify(out));
  }
}
