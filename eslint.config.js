import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import boundaries from 'eslint-plugin-boundaries';
import importX from 'eslint-plugin-import-x';

export default tseslint.config(
  {
    ignores: [
      '**/dist/**',
      '**/node_modules/**',
      'coverage/**',
      'sdk/python/**',
      'bench/**/*.mjs',
      '**/*.config.ts',
      'eslint.config.js',
      'packages/server/scripts/**',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
      // Fastify plugins and handlers are async by contract even when they do not await.
      '@typescript-eslint/require-await': 'off',
      'no-restricted-syntax': [
        'error',
        { selector: 'TSEnumDeclaration', message: 'Use string-literal unions, not enums.' },
      ],
    },
  },
  {
    files: ['packages/server/src/**/*.ts'],
    plugins: { boundaries, 'import-x': importX },
    settings: {
      'boundaries/include': ['packages/server/src/**/*'],
      'boundaries/elements': [
        { type: 'domain', pattern: 'packages/server/src/domain/*', mode: 'file' },
        { type: 'config', pattern: 'packages/server/src/config/*', mode: 'file' },
        // The interfaces come first: the first matching element wins.
        { type: 'store-api', pattern: 'packages/server/src/store/store.ts', mode: 'file' },
        { type: 'store', pattern: 'packages/server/src/store/**/*', mode: 'file' },
        {
          type: 'provider-api',
          pattern: 'packages/server/src/providers/provider.ts',
          mode: 'file',
        },
        { type: 'providers', pattern: 'packages/server/src/providers/**/*', mode: 'file' },
        { type: 'rpc', pattern: 'packages/server/src/rpc/**/*', mode: 'file' },
        { type: 'worker', pattern: 'packages/server/src/worker/**/*', mode: 'file' },
        { type: 'orchestrator', pattern: 'packages/server/src/orchestrator/**/*', mode: 'file' },
        { type: 'preview', pattern: 'packages/server/src/preview/**/*', mode: 'file' },
        { type: 'api', pattern: 'packages/server/src/api/**/*', mode: 'file' },
        { type: 'cli', pattern: 'packages/server/src/cli/**/*', mode: 'file' },
        { type: 'root', pattern: 'packages/server/src/*', mode: 'file' },
      ],
      'import/resolver': { typescript: { project: 'packages/server/tsconfig.json' }, node: true },
    },
    rules: {
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
      'boundaries/element-types': [
        'error',
        {
          default: 'disallow',
          rules: [
            { from: 'domain', allow: ['domain'] },
            { from: 'config', allow: ['domain', 'config'] },
            { from: 'store-api', allow: ['domain'] },
            { from: 'store', allow: ['domain', 'store-api', 'store'] },
            { from: 'provider-api', allow: ['domain'] },
            { from: 'providers', allow: ['domain', 'provider-api', 'providers'] },
            { from: 'rpc', allow: ['domain', 'provider-api', 'rpc'] },
            { from: 'worker', allow: ['domain', 'provider-api', 'rpc', 'worker'] },
            // The orchestrator sees only interfaces: never a store or provider implementation.
            {
              from: 'orchestrator',
              allow: ['domain', 'provider-api', 'rpc', 'store-api', 'orchestrator'],
            },
            { from: 'api', allow: ['domain', 'orchestrator', 'rpc', 'api'] },
            // The preview gateway is transport only: a resolver is injected, so it needs no orchestrator.
            { from: 'preview', allow: ['domain', 'provider-api', 'rpc', 'preview'] },
            { from: 'cli', allow: ['*'] },
            { from: 'root', allow: ['*'] },
          ],
        },
      ],
    },
  },
  {
    files: ['**/*.test.ts', '**/*.contract.ts', 'packages/*/test/**/*.ts'],
    rules: {
      'boundaries/element-types': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/unbound-method': 'off',
      // Tests read JSON bodies (typed any) and assert on them.
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
);
