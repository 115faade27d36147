// Runs before every test file: WebGPU in Node comes from Dawn (node/dawn.ts).
import { useDawn } from '../node/dawn.ts';

useDawn();
