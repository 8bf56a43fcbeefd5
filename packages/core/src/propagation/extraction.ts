import { createContextKey } from '@opentelemetry/api';
import type { Context, Link } from '@opentelemetry/api';
import type { ExtractOutcome, TraceFormat } from './outcome';

/** What the extraction that made a context found. */
export const EXTRACTION_KEY = createContextKey('meshtrace.extraction');

/** What an extraction found, kept in the context it made. */
export interface Extraction {
  readonly outcome: ExtractOutcome;
  readonly links: readonly Link[] | undefined;
  /** `deny`: the caller asked not to sample (`b3: 0`); `defer`: it left the decision to us. */
  readonly samplingHint: 'deny' | 'defer' | undefined;
  /** B3 debug flag received; kept for B3 injection. */
  readonly b3Debug: boolean;
}

/** What the extraction that made `context` found, if meshtrace made it. */
export function extractionOf(context: Context): Extraction | undefined {
  return context.getValue(EXTRACTION_KEY) as Extraction | undefined;
}

/** The context to run the request in, why it is what it is, and contexts to link to. */
export interface ExtractResult {
  readonly context: Context;
  readonly outcome: ExtractOutcome;
  /** Inbound contexts not continued but worth a span link (a disagreeing B3 context). */
  readonly links: readonly Link[] | undefined;
}

/** How to extract; fixed when a propagator is built. */
export interface ExtractConfig {
  readonly formats: readonly TraceFormat[];
  readonly baggage: boolean;
}
