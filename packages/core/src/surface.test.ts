import { join } from 'node:path';
import ts from 'typescript';

// Every name core exports shows in an editor's completion: what it exports is listed here, each with its doc line.
const program = ts.createProgram([join(__dirname, 'index.ts'), join(__dirname, 'adapter.ts')], {
  strict: true,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2022,
  noEmit: true,
});
const checker = program.getTypeChecker();

/** The names an entry exports, each with the first line of the documentation its declaration carries. */
function surface(entry: string): Map<string, string> {
  const file = program.getSourceFile(join(__dirname, entry));
  const module = file && checker.getSymbolAtLocation(file);
  if (module === undefined) throw new Error(`${entry} did not compile`);
  const docs = new Map<string, string>();
  for (const exported of checker.getExportsOfModule(module)) {
    const target = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
    const text = ts.displayPartsToString(target.getDocumentationComment(checker)).trim();
    docs.set(exported.name, text.split('\n')[0]);
  }
  return docs;
}

test.each(['index.ts', 'adapter.ts'])('every name %s exports is documented', (entry) => {
  const undocumented = [...surface(entry)].filter(([, doc]) => doc === '').map(([name]) => name);
  expect(undocumented).toEqual([]);
});

test('@meshtrace/core/adapter holds at most 20 names, none of them also an application entry name', () => {
  const adapter = [...surface('adapter.ts').keys()];
  const index = surface('index.ts');
  expect(adapter.length).toBeLessThanOrEqual(20);
  expect(adapter.filter((name) => index.has(name))).toEqual([]);
});
