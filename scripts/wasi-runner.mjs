#!/usr/bin/env node
// Runs a wasm32-wasip1 program under Node's built-in WASI (Node >= 20).
//
// Usable as a cargo runner:
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node scripts/wasi-runner.mjs" cargo test --target wasm32-wasip1
// argv: <program.wasm> [args...]. The program gets those args (argv[0] = the wasm path) and this
// process's environment, no preopened directories (no filesystem access), and this process exits with
// the program's exit code. A trap (e.g. a Rust panic under panic=abort) exits with 134, like SIGABRT.

// node:wasi prints an ExperimentalWarning on first use; drop exactly that one, keep every other warning.
const emitWarning = process.emitWarning;
process.emitWarning = function (warning, ...rest) {
  const type = typeof rest[0] === 'string' ? rest[0] : rest[0]?.type;
  const text = typeof warning === 'string' ? warning : warning?.message ?? '';
  const name = typeof warning === 'object' ? warning?.name : undefined;
  if ((type === 'ExperimentalWarning' || name === 'ExperimentalWarning') && /WASI/i.test(text)) {
    return;
  }
  return emitWarning.call(process, warning, ...rest);
};

const { readFile } = await import('node:fs/promises');
const { WASI } = await import('node:wasi');

const [wasmPath, ...args] = process.argv.slice(2);
if (!wasmPath) {
  process.stderr.write('usage: wasi-runner.mjs <program.wasm> [args...]\n');
  process.exit(2);
}

let exitCode;
try {
  const wasi = new WASI({
    version: 'preview1',
    args: [wasmPath, ...args],
    env: { ...process.env },
    preopens: {},
    returnOnExit: true,
  });
  const module = await WebAssembly.compile(await readFile(wasmPath));
  const instance = await WebAssembly.instantiate(module, {
    wasi_snapshot_preview1: wasi.wasiImport,
  });
  exitCode = wasi.start(instance);
} catch (err) {
  if (err instanceof WebAssembly.RuntimeError) {
    process.stderr.write(`wasi-runner: ${wasmPath} trapped: ${err.message}\n`);
    exitCode = 134;
  } else {
    process.stderr.write(`wasi-runner: ${err?.stack ?? err}\n`);
    exitCode = 1;
  }
}
process.exitCode = typeof exitCode === 'number' ? exitCode : 1;
