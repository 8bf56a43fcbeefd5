import { BlockList, isIP } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { warner } from '../internal/diagnostics';
import { optionError } from '../internal/options';
import type { TrustReason } from '../propagation/outcome';

/** What a server does with the trace context its callers send. */
export type InboundTrust = 'continue' | 'restart' | 'ignore';

/**
 * Trust declared without code: the caller's context is continued when the peer is inside
 * `trustedPeers` or a `trustedWhen` header is present; otherwise `otherwise` applies.
 */
export interface InboundTrustPolicy {
  /**
   * Peers whose context is continued: IPv4 or IPv6 addresses and CIDR ranges (`'10.0.0.0/8'`,
   * `'fd00::/8'`, `'127.0.0.1'`). An IPv4 range also holds its addresses written as IPv4-mapped
   * IPv6 (`::ffff:10.1.2.3`), as a dual-stack socket reports them.
   */
  trustedPeers?: readonly string[];
  /**
   * A header the sidecar sets after mTLS (and strips from anything else), e.g. `'x-forwarded-client-cert'`;
   * several names mean any of them. Present and non-empty, the caller is trusted.
   */
  trustedWhen?: string | readonly string[];
  /**
   * How many proxies in front of the service append the address they saw to `X-Forwarded-For`:
   * the peer is then that many hops back from the socket. Default `0`: `X-Forwarded-For` is never read.
   */
  proxyHops?: number;
  /** What an untrusted caller gets: `'restart'` (default) or `'ignore'`. */
  otherwise?: 'restart' | 'ignore';
}

/** The `inbound` option: one action for every request, a declarative policy, or a function of the request. */
export type InboundPolicy<Req> = InboundTrust | InboundTrustPolicy | ((request: Req) => InboundTrust);

/** What an inbound policy decided for one request. */
export interface TrustDecision {
  readonly action: InboundTrust;
  readonly reason: TrustReason | undefined;
}

/**
 * A checked inbound policy: decides for one request from its socket, its headers and the framework's request. Never
 * throws.
 */
export type TrustDecider<Req> = (req: IncomingMessage, request: Req) => TrustDecision;

function decision(action: InboundTrust, reason: TrustReason | undefined): TrustDecision {
  return Object.freeze({ action, reason });
}

/** Decisions are constants: deciding allocates nothing. */
const CONTINUE = decision('continue', undefined);
const STATIC = { restart: decision('restart', undefined), ignore: decision('ignore', undefined) };
const ROUTE = { restart: decision('restart', 'route-policy'), ignore: decision('ignore', 'route-policy') };
const UNTRUSTED = { restart: decision('restart', 'untrusted-peer'), ignore: decision('ignore', 'untrusted-peer') };
const POLICY = { restart: decision('restart', 'policy'), ignore: decision('ignore', 'policy') };
/**
 * A policy function that fails falls back to `restart`, the default `otherwise`: nobody joins a trace on a broken
 * policy.
 */
const POLICY_ERROR = decision('restart', 'policy-error');

const ACTIONS =
  "'continue', 'restart', 'ignore', a function of the request or { trustedPeers, trustedWhen, proxyHops, otherwise }";
const POLICY_KEYS = new Set(['trustedPeers', 'trustedWhen', 'proxyHops', 'otherwise']);
/** RFC 9110 token: what a header name may be. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Checks an `inbound` option at setup and returns its decider: a bad value throws a `TypeError`
 * naming `pkg` and `option` (an unknown action, an unparsable CIDR, a header name that is no token).
 * `route` marks a route's own policy, whose fixed actions are recorded with the reason `route-policy`.
 */
export function inboundPolicy<Req>(pkg: string, option: string, value: unknown, route = false): TrustDecider<Req> {
  if (value === 'continue') return () => CONTINUE;
  if (value === 'restart' || value === 'ignore') {
    const fixed = (route ? ROUTE : STATIC)[value];
    return () => fixed;
  }
  if (typeof value === 'function') return policyFunction(pkg, option, value as (request: Req) => unknown);
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw optionError(pkg, option, ACTIONS, value);
  return declared(pkg, option, value as InboundTrustPolicy);
}

function policyFunction<Req>(pkg: string, option: string, fn: (request: Req) => unknown): TrustDecider<Req> {
  const key = `${pkg}:${option}:failed`;
  return function decideByFunction(_req, request) {
    let action: unknown;
    try {
      action = fn(request);
    } catch (err) {
      warner.warn(
        key,
        () =>
          `${pkg}: the ${option} policy threw, so the request's trace was restarted: ` +
          `${err instanceof Error ? err.message : String(err)}`,
      );
      return POLICY_ERROR;
    }
    if (action === 'continue') return CONTINUE;
    if (action === 'restart' || action === 'ignore') return POLICY[action];
    warner.warn(
      key,
      () =>
        `${pkg}: the ${option} policy answered ` +
        `${typeof action === 'string' ? JSON.stringify(action) : typeof action}, not 'continue', 'restart' or ` +
        "'ignore', so the request's trace was restarted.",
    );
    return POLICY_ERROR;
  };
}

function declared<Req>(pkg: string, option: string, policy: InboundTrustPolicy): TrustDecider<Req> {
  for (const key of Object.keys(policy)) {
    if (!POLICY_KEYS.has(key))
      throw optionError(
        pkg,
        `${option}.${key}`,
        'absent: the policy takes trustedPeers, trustedWhen, proxyHops and otherwise',
        (policy as Record<string, unknown>)[key],
      );
  }
  const { trustedPeers, trustedWhen, proxyHops = 0, otherwise = 'restart' } = policy;
  if (otherwise !== 'restart' && otherwise !== 'ignore')
    throw optionError(pkg, `${option}.otherwise`, "'restart' or 'ignore'", otherwise);
  if (!Number.isInteger(proxyHops) || proxyHops < 0 || proxyHops > 64)
    throw optionError(pkg, `${option}.proxyHops`, 'an integer from 0 to 64', proxyHops);
  const peers = trustedPeers === undefined ? undefined : peerList(pkg, `${option}.trustedPeers`, trustedPeers);
  const headers = trustedWhen === undefined ? [] : headerNames(pkg, `${option}.trustedWhen`, trustedWhen);
  if (peers === undefined && headers.length === 0)
    throw optionError(pkg, option, 'a policy with trustedPeers or trustedWhen; its keys are', Object.keys(policy));
  const fallback = UNTRUSTED[otherwise];
  return function decideByPolicy(req) {
    const h = req.headers;
    for (const name of headers) {
      const v = h[name];
      if (v !== undefined && v.length > 0) return CONTINUE;
    }
    if (peers !== undefined && trusted(peers, peerAddress(req, proxyHops))) return CONTINUE;
    return fallback;
  };
}

function peerList(pkg: string, option: string, value: unknown): BlockList {
  const expected = "a list of IP addresses and CIDR ranges ('10.0.0.0/8', 'fd00::/8', '127.0.0.1')";
  if (!Array.isArray(value)) throw optionError(pkg, option, expected, value);
  const list = new BlockList();
  for (const entry of value) {
    const cidr = typeof entry === 'string' ? parseCidr(entry) : undefined;
    if (cidr === undefined) throw optionError(pkg, option, expected, entry);
    list.addSubnet(cidr.address, cidr.prefix, cidr.family);
  }
  return list;
}

/** A CIDR range or a single address, as `BlockList` takes it; undefined when it is neither. */
export function parseCidr(entry: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const slash = entry.indexOf('/');
  const address = slash < 0 ? entry : entry.slice(0, slash);
  // A zone (fe80::1%eth0) names a local interface, not a peer anyone else can see.
  const version = address.includes('%') ? 0 : isIP(address);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const bits = entry.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(bits) || Number(bits) > max) return undefined;
    prefix = Number(bits);
  }
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

function headerNames(pkg: string, option: string, value: unknown): string[] {
  const names = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(names) || names.length === 0 || names.some((n) => typeof n !== 'string' || !TOKEN.test(n))) {
    throw optionError(pkg, option, 'a header name or a non-empty list of them', value);
  }
  // Node's header object has lower-case names.
  return names.map((n: string) => n.toLowerCase());
}

/** An address as proxies write it into X-Forwarded-For: bare, `[v6]:port`, `[v6]` or `v4:port`. */
function bareAddress(text: string): string {
  const s = text.trim();
  if (s.charCodeAt(0) === 91 /* [ */) {
    const close = s.indexOf(']');
    return close < 0 ? s : s.slice(1, close);
  }
  const colon = s.indexOf(':');
  // One colon is an IPv4 address with a port; more make an IPv6 address.
  return colon > 0 && s.indexOf(':', colon + 1) < 0 ? s.slice(0, colon) : s;
}

/**
 * The address the decision is about: the socket's peer, or with `hops` trusted proxies in front,
 * the address `hops` entries back along X-Forwarded-For (read from the right, which is what those
 * proxies appended; anything further left is whatever the client wrote). A chain shorter than that
 * gives its furthest address, as the `trust proxy` hop count of Express and proxy-addr does.
 */
export function peerAddress(req: IncomingMessage, hops: number): string | undefined {
  const socketPeer = req.socket?.remoteAddress;
  if (hops === 0) return socketPeer;
  const raw = req.headers['x-forwarded-for'];
  const forwarded = typeof raw === 'string' ? raw : Array.isArray(raw) ? raw.join(',') : '';
  const entries = forwarded.split(',');
  let peer = socketPeer;
  for (let i = entries.length - 1, walked = 0; i >= 0 && walked < hops; i--) {
    const entry = entries[i].trim();
    if (entry.length === 0) continue;
    peer = bareAddress(entry);
    walked++;
  }
  return peer;
}

/** Whether `address` is in `peers`; anything that is not an IP address is not. */
function trusted(peers: BlockList, address: string | undefined): boolean {
  if (address === undefined) return false;
  const zone = address.indexOf('%');
  const bare = zone < 0 ? address : address.slice(0, zone);
  const version = isIP(bare);
  if (version === 0) return false;
  try {
    return peers.check(bare, version === 4 ? 'ipv4' : 'ipv6');
  } catch {
    return false;
  }
}
