import { Graph, layout } from '@dagrejs/dagre';
import type { MeshMap } from './graph';

/** Where the page draws a node: its centre and size. */
export interface NodeBox {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** Where the page draws an edge: its line, and the centre of its label (calls and share bar). */
export interface EdgeRoute {
  readonly points: ReadonlyArray<{ readonly x: number; readonly y: number }>;
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** A laid-out map: positions by node and edge id, and the size of the drawing. */
export interface MapLayout {
  readonly width: number;
  readonly height: number;
  readonly nodes: Readonly<Record<string, NodeBox>>;
  readonly edges: Readonly<Record<string, EdgeRoute>>;
}

/** The page's sizes, in CSS pixels: the label font is 14 px, about 8 px a character. */
export const SIZES = {
  charWidth: 8.6,
  smallCharWidth: 6.4,
  nodeHeight: 58,
  nodeMinWidth: 120,
  labelWidth: 196,
  labelHeight: 64,
} as const;

/** Lays the map out left to right (callers left of callees) with dagre, edge labels placed as nodes are. */
export function layOut(map: MeshMap): MapLayout {
  const g = new Graph({ multigraph: false });
  g.setGraph({ rankdir: 'LR', nodesep: 28, ranksep: 70, edgesep: 16, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of map.nodes) {
    // The name in bold 14 px; below it, in 12 px: group · kind · "N received".
    const sub = (n.group === '' ? 0 : n.group.length + 3) + (n.kind === 'service' ? 0 : 19) + 14;
    const text = Math.max(n.label.length * SIZES.charWidth, sub * SIZES.smallCharWidth);
    g.setNode(n.id, {
      width: Math.max(SIZES.nodeMinWidth, Math.ceil(text) + 28),
      height: SIZES.nodeHeight,
    });
  }
  for (const e of map.edges)
    g.setEdge(e.from, e.to, { width: SIZES.labelWidth, height: SIZES.labelHeight, labelpos: 'c' });
  layout(g);
  const nodes: Record<string, NodeBox> = {};
  for (const id of g.nodes()) {
    const n = g.node(id);
    nodes[id] = { x: n.x, y: n.y, width: n.width, height: n.height };
  }
  const edges: Record<string, EdgeRoute> = {};
  for (const e of map.edges) {
    const label = g.edge(e.from, e.to) as { points?: Array<{ x: number; y: number }>; x?: number; y?: number };
    const points = (label.points ?? []).map((p) => ({ x: p.x, y: p.y }));
    // A self-call (a service calling itself through a proxy that records nothing) has its label beside the node.
    const at = nodes[e.from];
    edges[e.id] = {
      points,
      x: label.x ?? at.x,
      y: label.y ?? at.y - at.height,
      width: SIZES.labelWidth,
      height: SIZES.labelHeight,
    };
  }
  const size = g.graph() as { width?: number; height?: number };
  return { width: Math.ceil(size.width ?? 0), height: Math.ceil(size.height ?? 0), nodes, edges };
}
