// Compiles contracts/src/*.sol with the npm solc package (solcjs) into contracts/artifacts/<Name>.json.
//
// solcjs is the only Solidity compiler available offline here (forge would download a native solc), so the
// artifacts are committed and tests/unit/test_contract_artifacts.py recompiles to prove they are current.
//
// Usage: node contracts/build.mjs [--out <dir>]      (npm run build:contracts)
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const contractsDir = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.dirname(contractsDir);
const srcDir = path.join(contractsDir, "src");

// Pinned rather than solc's default so a compiler upgrade cannot silently emit opcodes (e.g. CLZ) that a
// given Anvil hardfork or a real chain rejects; Anvil 1.7.1's default hardfork is newer than cancun.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

function parseOutDir(argv) {
  const i = argv.indexOf("--out");
  if (i === -1) return path.join(contractsDir, "artifacts");
  if (!argv[i + 1]) throw new Error("--out needs a directory");
  return path.resolve(argv[i + 1]);
}

// Source keys are repo-relative POSIX paths: they end up in the metadata hash inside the bytecode, so they
// must not depend on where the checkout lives.
function sourceKey(file) {
  return path.relative(repoRoot, path.join(srcDir, file)).split(path.sep).join("/");
}

function sha256(text) {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

function main() {
  const outDir = parseOutDir(process.argv.slice(2));
  const files = readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort();
  if (files.length === 0) throw new Error(`no .sol files in ${srcDir}`);

  const sources = {};
  for (const file of files) {
    sources[sourceKey(file)] = { content: readFileSync(path.join(srcDir, file), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  // No import callback: every import must be a file in contracts/src, which is already in `sources`.
  const output = JSON.parse(solc.compile(JSON.stringify(input)));

  const problems = output.errors ?? [];
  for (const p of problems) console.error(p.formattedMessage ?? p.message);
  if (problems.some((p) => p.severity === "error")) process.exit(1);

  mkdirSync(outDir, { recursive: true });
  const names = [];
  for (const key of Object.keys(sources)) {
    for (const [name, contract] of Object.entries(output.contracts[key] ?? {})) {
      const artifact = {
        contractName: name,
        sourceName: key,
        sourceSha256: sha256(sources[key].content),
        compiler: { name: "solc", version: solc.version() },
        settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion },
        abi: contract.abi,
        bytecode: "0x" + contract.evm.bytecode.object,
        // Immutables (e.g. ERC1271Wallet.owner) are zero-filled here; on-chain code has them set.
        deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
      };
      writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
      names.push(name);
    }
  }
  console.log(`solc ${solc.version()}: wrote ${names.join(", ")} to ${path.relative(process.cwd(), outDir) || "."}`);
}

main();
