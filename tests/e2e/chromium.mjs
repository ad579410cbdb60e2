// How the end-to-end tests start the system Chromium: headless, no network chatter (this
// machine's closed network refuses it), and WebGPU through SwiftShader's Vulkan.

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export const BASE_ARGS = ["--headless=new", "--no-sandbox", "--no-first-run", "--disable-gpu-sandbox",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"];

export const WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
  "--use-angle=swiftshader", "--enable-unsafe-swiftshader"];

export const NO_WEBGPU_ARGS = ["--disable-webgpu", "--disable-features=WebGPU"];
