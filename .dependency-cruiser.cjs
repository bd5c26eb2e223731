/**
 * The house rules, checked by `npm run lint:deps` (part of `npm test`, so CI runs it).
 * Imports flow one way:  cli → daemon → pageserver → chunkstore / wal → safekeeper → replication → postgres → lib → core;
 * plugins see only core (the public API a third-party plugin gets from 'neon-local').
 * @type {import('dependency-cruiser').IConfiguration}
 */
/** A layer may import only the folders listed (and packages, node built-ins). */
function layer(folder, allowed) {
  return [
    {
      name: `${folder}-imports-only-${allowed.filter((a) => a !== folder).join('-')}`,
      severity: 'error',
      comment: `${folder}/ sits below what it must not see; see "How the code is laid out" in README.md.`,
      from: { path: `^${folder}/` },
      to: { path: `^(?!(${allowed.join('|')})/)[^/]+/`, dependencyTypesNot: ['npm', 'npm-dev', 'npm-optional', 'core'] },
    },
  ];
}

module.exports = {
  forbidden: [
    { name: 'no-cycles', severity: 'error', comment: 'Import cycles make start-up order and tests fragile.', from: {}, to: { circular: true } },
    {
      name: 'core-is-the-plugin-host',
      severity: 'error',
      comment: 'core/ imports nothing of the tree but itself: node built-ins and its packages only.',
      from: { path: '^core/' },
      to: { path: '^(?!core/)[^/]+/', dependencyTypesNot: ['npm', 'npm-dev', 'npm-optional', 'core'] },
    },
    {
      name: 'plugins-see-only-core',
      severity: 'error',
      comment: "A plugin imports core/ (the public API) and its own files: what a third-party plugin can do.",
      from: { path: '^plugins/([^/]+)/' },
      to: { path: '^(?!core/|plugins/$1/)[^/]+/', dependencyTypesNot: ['npm', 'npm-dev', 'npm-optional', 'core'] },
    },
    {
      name: 'nothing-imports-tests',
      severity: 'error',
      comment: 'Tests import the product and testkit/; nothing imports a test.',
      from: { pathNot: '^test/' },
      to: { path: '^test/' },
    },
    {
      name: 'nothing-imports-benchmarks',
      severity: 'error',
      from: { pathNot: '^bench/' },
      to: { path: '^bench/' },
    },
    {
      name: 'testkit-is-for-tests-and-benchmarks',
      severity: 'error',
      from: { pathNot: '^(test|bench|testkit)/' },
      to: { path: '^testkit/' },
    },
    {
      name: 'only-the-cli-and-daemon-see-the-daemon',
      severity: 'error',
      comment: 'The engines (pageserver, safekeeper, wal, chunkstore, replication, postgres, lib) do not reach up.',
      from: { path: '^(pageserver|safekeeper|wal|chunkstore|replication|postgres|lib)/' },
      to: { path: '^(daemon|cli)/' },
    },
    {
      name: 'the-daemon-does-not-see-the-cli',
      severity: 'error',
      from: { path: '^daemon/' },
      to: { path: '^cli/' },
    },
    ...layer('lib', ['core', 'lib']),
    ...layer('replication', ['core', 'replication']),
    ...layer('postgres', ['core', 'lib', 'replication', 'postgres']),
    ...layer('chunkstore', ['core', 'lib', 'chunkstore']),
    ...layer('safekeeper', ['core', 'lib', 'replication', 'postgres', 'wal', 'safekeeper']),
    ...layer('wal', ['core', 'lib', 'replication', 'postgres', 'wal']),
    ...layer('pageserver', ['core', 'lib', 'replication', 'postgres', 'wal', 'safekeeper', 'chunkstore', 'pageserver']),
    {
      name: 'no-unresolvable',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
  },
};
