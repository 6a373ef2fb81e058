"""Job factories: each module's ``make(**params)`` returns a ``rayjac.Problem``.

A config names a factory as ``problem: jobs.<module>:make`` and passes ``params`` to it.

* ``lorenz96`` -- the Lorenz-96 right-hand side of size ``n`` (chaotic ODE).
* ``hodgkin_huxley`` -- one RK4 step of a gap-junction coupled Hodgkin-Huxley population whose
  state ``V, m, h, n`` lives in Variables.
* ``mlp`` -- a multilayer perceptron whose weights are a dict of Variables.
* ``gray_scott`` -- one explicit step of the Gray-Scott reaction-diffusion system on a 2D grid.
* ``wilson_cowan`` -- the right-hand side of an excitatory/inhibitory Wilson-Cowan rate network.
"""
