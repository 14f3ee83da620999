// tfjs-backend-webgpu, in its own chunk (webgpu-*.js): the page loads it only when webgpu is chosen.
export * from '@tensorflow/tfjs-backend-webgpu';
