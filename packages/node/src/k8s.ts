import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DetectedResource, ResourceDetector } from '@opentelemetry/resources';

/** Options of {@link kubernetesDetector}. */
export interface KubernetesDetectorOptions {
  /** Where the downward-API variables are read. Default `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
  /** The proc filesystem to read `self/cgroup` and `self/mountinfo` from. Default `/proc`. */
  procRoot?: string;
}

const CONTAINER_ID = /(?:^|[^0-9a-f])([0-9a-f]{64})(?:[^0-9a-f]|$)/;
const POD_UID = /pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})/;

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** The container id from cgroup v1 paths, else from cgroup v2 mounts (the container's own hostname file). */
export function containerIdFrom(cgroup: string | undefined, mountinfo: string | undefined): string | undefined {
  for (const line of cgroup?.split('\n') ?? []) {
    const m = CONTAINER_ID.exec(line.slice(line.lastIndexOf(':') + 1));
    if (m) return m[1];
  }
  for (const line of mountinfo?.split('\n') ?? []) {
    if (!line.includes('/hostname') && !line.includes('/containers/')) continue;
    const m = CONTAINER_ID.exec(line);
    if (m) return m[1];
  }
  return undefined;
}

function first(env: Readonly<Record<string, string | undefined>>, names: string[]): string | undefined {
  for (const n of names) {
    const v = env[n]?.trim();
    if (v) return v;
  }
  return undefined;
}

/**
 * Resource attributes of a pod: `k8s.pod.name`, `k8s.pod.uid`, `k8s.namespace.name`, `k8s.node.name`
 * from the downward API (`K8S_*` and the common `POD_*`/`NODE_NAME` spellings) and `container.id`
 * from the cgroup files.
 * @example setupMeshTracing({ resourceDetectors: [envDetector, kubernetesDetector()] })
 */
export function kubernetesDetector(options: KubernetesDetectorOptions = {}): ResourceDetector {
  return {
    detect(): DetectedResource {
      const env = options.env ?? process.env;
      const proc = options.procRoot ?? '/proc';
      const cgroup = read(join(proc, 'self', 'cgroup'));
      const attributes: Record<string, string> = {};
      const inCluster = env.KUBERNETES_SERVICE_HOST !== undefined;
      // A pod's hostname is its name unless the spec overrides it.
      const pod = first(env, ['K8S_POD_NAME', 'POD_NAME']) ?? (inCluster ? env.HOSTNAME : undefined);
      const namespace = first(env, ['K8S_NAMESPACE_NAME', 'K8S_NAMESPACE', 'POD_NAMESPACE']);
      const node = first(env, ['K8S_NODE_NAME', 'NODE_NAME']);
      const uid = first(env, ['K8S_POD_UID', 'POD_UID']) ?? POD_UID.exec(cgroup ?? '')?.[1].replace(/_/g, '-');
      const container = containerIdFrom(cgroup, read(join(proc, 'self', 'mountinfo')));
      if (pod) attributes['k8s.pod.name'] = pod;
      if (uid) attributes['k8s.pod.uid'] = uid;
      if (namespace) attributes['k8s.namespace.name'] = namespace;
      if (node) attributes['k8s.node.name'] = node;
      if (container) attributes['container.id'] = container;
      return { attributes };
    },
  };
}
