import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import boundaries from 'eslint-plugin-boundaries';

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
    plugins: { boundaries },
    settings: {
      'boundaries/include': ['packages/server/src/**/*'],
      'boundaries/elements': [
        { type: 'domain', pattern: 'packages/server/src/domain/*', mode: 'file' },
        { type: 'config', pattern: 'packages/server/src/config/*', mode: 'file' },
        { type: 'store', pattern: 'packages/server/src/store/**/*', mode: 'file' },
        { type: 'providers', pattern: 'packages/server/src/providers/**/*', mode: 'file' },
        { type: 'rpc', pattern: 'packages/server/src/rpc/**/*', mode: 'file' },
        { type: 'worker', pattern: 'packages/server/src/worker/**/*', mode: 'file' },
        { type: 'orchestrator', pattern: 'packages/server/src/orchestrator/**/*', mode: 'file' },
        { type: 'api', pattern: 'packages/server/src/api/**/*', mode: 'file' },
        { type: 'cli', pattern: 'packages/server/src/cli/**/*', mode: 'file' },
        { type: 'root', pattern: 'packages/server/src/*', mode: 'file' },
      ],
      'import/resolver': { typescript: { project: 'packages/server/tsconfig.json' }, node: true },
    },
    rules: {
      'boundaries/element-types': [
        'error',
        {
          default: 'disallow',
          rules: [
            { from: 'domain', allow: ['domain'] },
            { from: 'config', allow: ['domain', 'config'] },
            { from: 'store', allow: ['domain', 'store'] },
            { from: 'providers', allow: ['domain', 'providers'] },
            { from: 'rpc', allow: ['domain', 'providers', 'rpc'] },
            { from: 'worker', allow: ['domain', 'providers', 'rpc', 'worker'] },
            {
              from: 'orchestrator',
              allow: ['domain', 'providers', 'rpc', 'store', 'orchestrator'],
            },
            { from: 'api', allow: ['domain', 'orchestrator', 'rpc', 'api'] },
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
