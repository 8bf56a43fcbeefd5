/**
 * Every version the end-to-end apps install, exact, in one place: the apps are what a user builds
 * with `npm install`, so a floating range here would make a failure depend on the day it ran.
 */

/** One OpenTelemetry release line an application may already run, and what it installs for it. */
export interface OtelLine {
  /** `3.x` or `2.x`: the SDK's major version. */
  readonly name: string;
  /** The lowest Node the line's packages declare in `engines`. */
  readonly minNode: string;
  /** The package the app takes `SimpleSpanProcessor` from: SDK 3 moved it out of sdk-trace-base. */
  readonly sdkTracePackage: string;
  /** What an app that starts the official SDK installs, beside meshtrace and its framework. */
  readonly dependencies: Readonly<Record<string, string>>;
}

/** SDK 3 and API 1.10: what npm serves as `latest` today. */
export const OTEL_3: OtelLine = {
  name: '3.x',
  minNode: '22.15.0',
  sdkTracePackage: '@opentelemetry/sdk-trace',
  dependencies: {
    '@opentelemetry/api': '1.10.0',
    '@opentelemetry/sdk-node': '0.301.2',
    // Depends on sdk-node ^0.300.0, so npm nests an sdk-node 0.300 beside the app's 0.301: a user
    // who installs the latest of both gets that tree too.
    '@opentelemetry/auto-instrumentations-node': '0.82.0',
    '@opentelemetry/sdk-trace': '3.1.1',
    '@opentelemetry/resources': '3.1.1',
    '@opentelemetry/context-async-hooks': '3.1.1',
    '@opentelemetry/exporter-trace-otlp-proto': '0.301.2',
    // The newest release; its peer `@opentelemetry/api` ^1.9.0 admits 1.10, and it brings its own
    // @opentelemetry/instrumentation 0.222 (which accepts API ^1.3.0).
    '@fastify/otel': '0.21.2',
  },
};

/** SDK 2.x and API 1.9, the line most services run today. */
export const OTEL_2: OtelLine = {
  name: '2.x',
  minNode: '20.6.0',
  sdkTracePackage: '@opentelemetry/sdk-trace-base',
  dependencies: {
    '@opentelemetry/api': '1.9.1',
    '@opentelemetry/sdk-node': '0.223.0',
    // Depends on sdk-node ^0.223.0 and instrumentation ^0.223.0: the same line as the SDK.
    '@opentelemetry/auto-instrumentations-node': '0.81.2',
    // 2.12.0, not 2.12.1: sdk-node 0.223.0 pins 2.12.0, so the app shares one copy with it.
    '@opentelemetry/sdk-trace-base': '2.12.0',
    '@opentelemetry/resources': '2.12.0',
    '@opentelemetry/context-async-hooks': '2.12.0',
    '@opentelemetry/exporter-trace-otlp-proto': '0.223.0',
    '@fastify/otel': '0.21.2',
  },
};

/** The web frameworks the apps are written for. */
export const FRAMEWORKS: Readonly<Record<string, string>> = {
  express: '5.3.0',
  fastify: '5.12.8',
  koa: '3.3.0',
  '@koa/router': '15.7.0',
};

/** The API an app without any SDK installs: the newest, as `npm install @opentelemetry/api` would. */
export const API_ONLY_API = OTEL_3.dependencies['@opentelemetry/api'];

/**
 * What the module-format app installs beside every public package so that the declarations of each
 * resolve in its TypeScript check as they do for that package's users: the transport clients some
 * packages take as peers, and the type packages of frameworks that ship none. The versions the
 * workspace builds against; TypeScript itself is the workspace's own compiler, read below.
 */
export const TYPE_CHECK_PEERS: Readonly<Record<string, string>> = {
  '@types/node': '20.19.43',
  '@types/express': '5.0.6',
  '@types/koa': '3.0.3',
  '@types/amqplib': '0.10.8',
  kafkajs: '2.2.4',
  amqplib: '0.10.9',
  '@grpc/grpc-js': '1.14.7',
};

/** The TypeScript the workspace builds with (its root devDependency, as installed): the app checks with the same. */
export const TYPESCRIPT: string = (require('typescript/package.json') as { version: string }).version;
