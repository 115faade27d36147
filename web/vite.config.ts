// The web page's dev server and static build (Vite: `npm run web`, `npm run web:build`).
//
// Cross-origin isolation (the two headers below) is what lets a page use SharedArrayBuffer,
// which the CPU backend's WebAssembly memory shared with its kernel threads needs. A static host
// must send the same two headers for the CPU path to use more than one thread (it still runs
// without them, on one).
import { defineConfig } from 'vite';

const isolation = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

export default defineConfig({
  root: import.meta.dirname,
  base: './', // a build that works from any folder of any static host
  server: { headers: isolation, port: 5173 },
  preview: { headers: isolation, port: 4173 },
  // cli.ts (under train_config.ts's presets) imports Dawn lazily, for the scripts: never in the page
  worker: { format: 'es', rollupOptions: { external: ['webgpu', /^node:/] } },
  resolve: {
    alias: {
      // pngjs's own browser build: its Node build needs zlib and streams, which a page lacks
      pngjs: 'pngjs/browser.js',
    },
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
  },
});
