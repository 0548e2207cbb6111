import { defineConfig } from "vite";

// Served by the tessera binary at /portal (see src/http/portal.rs): hashed file names under
// assets/ are cached for good, and the Content-Security-Policy forbids inline scripts, so
// nothing may be inlined into index.html.
export default defineConfig({
  base: "/portal/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    target: "es2022",
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
  },
});
