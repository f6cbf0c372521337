// ESLint for vmdevd: typescript-eslint with type information, the layering
// of the three layers (README.md, "Development"), and promise hygiene.
// The tools live in tools/lint (their own package: typescript-eslint needs
// the TypeScript compiler API, which the TypeScript 7 that builds vmdevd
// does not ship), so they are resolved from there.
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('.', import.meta.url));
const tools = createRequire(new URL('./tools/lint/package.json', import.meta.url));
const load = async (name) => (await import(pathToFileURL(tools.resolve(name)).href)).default;

const js = await load('@eslint/js');
const tseslint = await load('typescript-eslint');
const globals = await load('globals');
const importX = await load('eslint-plugin-import-x');
const { createTypeScriptImportResolver } = await import(
  pathToFileURL(tools.resolve('eslint-import-resolver-typescript')).href
);

/** The in-repo plugins: each is a layer of its own (globs do not work in no-restricted-paths targets). */
const PLUGINS = readdirSync(new URL('./plugins', import.meta.url), { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name);

const TS = [
  'examples/*/src/**/*.ts',
  'src/**/*.ts',
  'plugins/*/src/**/*.ts',
  'plugins/*/test/**/*.ts',
  'test/**/*.ts',
  'bench/*.ts',
];
const JS = ['scripts/*.mjs', 'bench/*.mjs', 'bin/*', 'eslint.config.mjs'];

/** A plugin may use nothing of vmdevd but its plugin API (and, in its tests, the test harness). */
const pluginImports = (allowed) => ({
  patterns: [
    {
      regex: `^vmdevd(?!/(${allowed})$)(/.*)?$`,
      message: `a plugin uses nothing of vmdevd but ${allowed.replaceAll('|', ' and ').replaceAll('.*', '*')}`,
    },
  ],
});

export default tseslint.config(
  { ignores: ['**/dist/**', '**/build/**', '**/node_modules/**', 'tools/**', 'bench/c/**'] },
  {
    files: [...TS, ...JS],
    extends: [js.configs.recommended],
    languageOptions: { globals: { ...globals.node } },
  },
  {
    files: TS,
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: root } },
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [
        createTypeScriptImportResolver({
          project: ['src/tsconfig.json', 'plugins/*/tsconfig.json'],
          noWarnOnMultipleProjects: true,
        }),
      ],
    },
    rules: {
      // node:test's describe() and it() return promises the runner awaits itself.
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            {
              from: 'package',
              package: 'node:test',
              name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'],
            },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      // An async function without await is how a method of a promise-returning
      // contract is written when it has nothing to wait for: what it throws
      // becomes a rejection, as the contract says.
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // The layers: the core knows no bus, daemon or plugin; the D-Bus
      // frontend knows no daemon; a plugin knows only the plugin API.
      'import-x/no-restricted-paths': [
        'error',
        {
          zones: [
            {
              target: './src/core',
              from: ['./src/dbus', './src/daemon', './src/cli', './src/client', './plugins'],
              message: 'the core is pure: no bus, no daemon, no plugin',
            },
            { target: './src/plugin-api.ts', from: ['./src/core', './src/dbus', './src/daemon', './plugins'] },
            {
              target: './src/protocol.ts',
              from: ['./src/core', './src/dbus', './src/daemon', './src/client', './plugins'],
            },
            {
              target: './src/dbus',
              from: ['./src/daemon', './src/cli', './plugins'],
              message: 'the D-Bus frontend knows no daemon and no plugin',
            },
            { target: './src/client', from: ['./src/core', './src/daemon', './src/cli', './plugins'] },
            { target: './src/cli', from: ['./src/core', './src/daemon', './plugins'] },
            ...PLUGINS.map((name) => ({
              target: `./plugins/${name}/src`,
              from: [
                './src',
                './test',
                ...PLUGINS.filter((other) => other !== name).map((other) => `./plugins/${other}`),
              ],
              message: "a plugin imports vmdevd/plugin-api, never vmdevd's files or another plugin's",
            })),
          ],
        },
      ],
    },
  },
  {
    files: ['plugins/*/src/**/*.ts', 'examples/*/src/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', pluginImports('plugin-api')] },
  },
  {
    files: ['plugins/*/test/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', pluginImports('plugin-api|testing/.*')] },
  },
);
