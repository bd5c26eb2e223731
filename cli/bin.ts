#!/usr/bin/env node
// The `neon` (and `neon-local`) command. Kept apart from main.ts so that importing the CLI runs nothing.
import { fileURLToPath } from 'node:url';
import { main } from './main.js';

await main(process.argv, fileURLToPath(import.meta.url));
