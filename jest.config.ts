import type { Config } from 'jest';

const config: Config = {
  testEnvironment: 'node',
  roots: ['<rootDir>/packages', '<rootDir>/demo', '<rootDir>/e2e'],
  testMatch: ['**/src/**/*.test.ts'],
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      { jsc: { target: 'es2022', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' } },
    ],
  },
  // Tests run against sources, so no build is needed between an edit and a test run.
  moduleNameMapper: {
    '^@meshtrace/core/adapter$': '<rootDir>/packages/core/src/adapter.ts',
    '^@meshtrace/([a-z0-9-]+)$': '<rootDir>/packages/$1/src/index.ts',
  },
  testTimeout: 30000,
};

export default config;
