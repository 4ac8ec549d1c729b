// Bundle the upload page into gateway/static/, the files the Python package ships.
//
// The output is committed, so `make run` needs neither Node nor the network; `make web`
// runs this after a change to src/ or to the pinned packages. The build is deterministic
// (no timestamps, no source maps with absolute paths): the same lockfile gives the same
// bytes, which tests/browser/test_upload_page.py checks when web/node_modules is present.
//
// Usage: node build.mjs [output directory]   (default: ../gateway/static)

import { build } from 'esbuild'
import { copyFile, mkdir, readFile, readdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const outDir = path.resolve(process.argv[2] ?? path.join(here, '..', 'gateway', 'static'))

const result = await build({
  absWorkingDir: here,
  entryPoints: { 'upload-page': 'src/upload-page.js' },
  bundle: true,
  format: 'iife',
  // Browsers from the last few years; Uppy's own support matrix is no wider.
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  minify: true,
  // Licence comments are collected into one file below instead of staying inline.
  legalComments: 'none',
  outdir: outDir,
  metafile: true,
  logLevel: 'warning',
})

await mkdir(outDir, { recursive: true })
await copyFile(path.join(here, 'src', 'index.html'), path.join(outDir, 'index.html'))

// The bundle holds third-party code; ship each package's licence beside it.
const packages = new Map()
for (const input of Object.keys(result.metafile.inputs)) {
  const match = input.match(/^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//)
  if (match) packages.set(match[1], null)
}
const notices = []
for (const dir of [...packages.keys()].sort()) {
  const manifest = JSON.parse(await readFile(path.join(here, dir, 'package.json'), 'utf8'))
  const files = (await readdir(path.join(here, dir))).filter((f) => /^(licen[cs]e|copying)/i.test(f))
  const text = files.length
    ? (await readFile(path.join(here, dir, files[0]), 'utf8')).trim()
    : `License: ${manifest.license ?? 'unknown'} (no licence file in the package)`
  notices.push(`${manifest.name} ${manifest.version}\n${'-'.repeat(40)}\n${text}\n`)
}
await writeFile(path.join(outDir, 'THIRD-PARTY-LICENSES.txt'),
  `Third-party code bundled into upload-page.js and upload-page.css.\n\n${notices.join('\n')}`)

console.log(`built ${Object.keys(result.metafile.outputs).length} files and licences of ` +
  `${packages.size} packages into ${path.relative(process.cwd(), outDir) || '.'}`)
