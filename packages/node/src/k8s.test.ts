import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containerIdFrom, kubernetesDetector } from '@meshtrace/node';

const ID = 'a'.repeat(8) + '0123456789abcdef'.repeat(3) + 'b'.repeat(8);
const UID = '6f2b1c3d-1111-4a2b-9c3d-0123456789ab';
let proc: string;

function fakeProc(cgroup: string, mountinfo = ''): string {
  const root = mkdtempSync(join(tmpdir(), 'proc-'));
  mkdirSync(join(root, 'self'));
  writeFileSync(join(root, 'self', 'cgroup'), cgroup);
  writeFileSync(join(root, 'self', 'mountinfo'), mountinfo);
  proc = root;
  return root;
}
afterEach(() => proc && rmSync(proc, { recursive: true, force: true }));

const detect = (env: Record<string, string>, root: string) =>
  kubernetesDetector({ env, procRoot: root }).detect().attributes;

test('downward API variables and a cgroup v1 path', () => {
  const root = fakeProc(`12:memory:/kubepods/burstable/pod${UID}/${ID}\n11:cpu:/kubepods/burstable/pod${UID}/${ID}\n`);
  expect(detect({ K8S_POD_NAME: 'checkout-7d9f', K8S_NAMESPACE_NAME: 'shop', K8S_NODE_NAME: 'node-1' }, root)).toEqual({
    'k8s.pod.name': 'checkout-7d9f',
    'k8s.pod.uid': UID,
    'k8s.namespace.name': 'shop',
    'k8s.node.name': 'node-1',
    'container.id': ID,
  });
});

test.each([
  [
    { POD_NAME: 'p', POD_NAMESPACE: 'ns', NODE_NAME: 'n' },
    { 'k8s.pod.name': 'p', 'k8s.namespace.name': 'ns', 'k8s.node.name': 'n' },
  ],
  [{ K8S_NAMESPACE: 'old-style' }, { 'k8s.namespace.name': 'old-style' }],
  [{ KUBERNETES_SERVICE_HOST: '10.0.0.1', HOSTNAME: 'web-0' }, { 'k8s.pod.name': 'web-0' }],
  [{ HOSTNAME: 'laptop' }, {}],
])('env spellings %j', (env, want) => {
  expect(detect(env, fakeProc('0::/\n'))).toEqual(want);
});

test('cgroup v2: the container id comes from the mounts', () => {
  const mountinfo = `1 0 0:1 / / rw - overlay overlay rw\n2 1 8:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/${ID}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n`;
  expect(detect({}, fakeProc('0::/\n', mountinfo))).toEqual({ 'container.id': ID });
});

test.each([
  [
    'systemd cri-containerd scope',
    `0::/kubepods.slice/kubepods-pod${UID.replace(/-/g, '_')}.slice/cri-containerd-${ID}.scope`,
    ID,
  ],
  ['docker', `1:name=systemd:/docker/${ID}`, ID],
  ['not a container', '0::/user.slice/session-1.scope', undefined],
])('containerIdFrom: %s', (_name, cgroup, want) => {
  expect(containerIdFrom(cgroup, undefined)).toBe(want);
});

test('no proc filesystem is no error', () => {
  expect(kubernetesDetector({ env: {}, procRoot: join(tmpdir(), 'does-not-exist') }).detect().attributes).toEqual({});
});
