// Runs statements through the real Node Snowflake driver (snowflake-sdk, JSON results) and
// prints one JSON line: for each statement its columns and rows (every value as the driver
// delivers it as text, `fetchAsString`), or the error the driver raised. Used by
// tests/it/node.rs against snowgate in front of the Rust Snowflake double.
//
//   node query.js --url http://127.0.0.1:PORT --token <OIDC JWT> --query 'select …' [--pause MS] [--query …]
//
// `--pause MS` waits that long before the next query (so a short-lived session token expires
// and the driver renews it).
'use strict';

const snowflake = require('snowflake-sdk');

function parseArgs(argv) {
  const args = { steps: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--url') args.url = value;
    else if (flag === '--token') args.token = value;
    else if (flag === '--query') args.steps.push({ sql: value });
    else if (flag === '--pause') args.steps.push({ pauseMs: Number(value) });
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!args.url || !args.token || !args.steps.some((step) => step.sql !== undefined)) throw new Error('--url, --token and --query are required');
  return args;
}

function execute(connection, sqlText) {
  return new Promise((resolve) => {
    connection.execute({
      sqlText,
      rowMode: 'array',
      fetchAsString: ['Number', 'Date', 'JSON', 'Boolean'],
      complete: (err, statement, rows) => {
        if (err) {
          resolve({ error: { code: err.code === undefined ? null : String(err.code), message: err.message, sqlState: err.sqlState || null } });
        } else {
          resolve({ columns: statement.getColumns().map((c) => [c.getName(), c.getType()]), rows });
        }
      },
    });
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // The driver logs to a file in its working directory unless told otherwise.
  snowflake.configure({ logLevel: 'ERROR', additionalLogToConsole: false, logFilePath: process.env.SNOWGATE_NODE_LOG_DIR || '.' });
  const connection = snowflake.createConnection({
    account: 'testacct',
    username: 'agent',
    authenticator: 'OAUTH',
    token: args.token,
    accessUrl: args.url,
  });
  await new Promise((resolve, reject) => connection.connect((err) => (err ? reject(err) : resolve())));
  const results = [];
  for (const step of args.steps) {
    if (step.sql === undefined) await new Promise((resolve) => setTimeout(resolve, step.pauseMs));
    else results.push(await execute(connection, step.sql));
  }
  await new Promise((resolve) => connection.destroy(() => resolve()));
  process.stdout.write(JSON.stringify(results) + '\n');
}

main().catch((err) => {
  process.stderr.write(`query.js: ${err && err.message}\n`);
  process.exit(1);
});
